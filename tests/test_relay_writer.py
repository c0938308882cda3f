"""The relay's outgoing side in isolation: how queued lines become frames, and how a
send that had to wait is finished by a task."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.broker import OP_PREFIX, op_json, op_tail
from relay.hub import Conn, Resumed, frames


def test_both_brokers_forward_the_same_op_line() -> None:
    """In-process lines are made whole; Redis ones as a head, the seq, and a tail."""
    args = ("QUJD", 1_700_000_000, "dev-1", 1_700_000_005)
    line = op_json(42, *args)
    assert line == OP_PREFIX + "42" + op_tail(*args)
    assert line.startswith('{"type":"crdt_operation","seq":42,"payload":"QUJD",')


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=600).map(lambda b: base64.b64encode(b).decode()),
    device_id=st.binary(min_size=16, max_size=16).map(bytes.hex),
    timestamp=st.integers(min_value=0, max_value=2**53),
    relay_timestamp=st.integers(min_value=0, max_value=2**53),
    seq=st.integers(min_value=1, max_value=2**53),
)
def test_the_op_line_written_as_text_is_the_json_of_the_op(
    payload: str, device_id: str, timestamp: int, relay_timestamp: int, seq: int
) -> None:
    """What a checked op can hold (standard base64, a device id of 32 hex digits, whole
    numbers) needs no escaping: the line is exactly what a JSON encoder writes."""
    line = op_json(seq, payload, timestamp, device_id, relay_timestamp)
    op = {
        "type": "crdt_operation",
        "seq": seq,
        "payload": payload,
        "timestamp": timestamp,
        "device_id": device_id,
        "relay_timestamp": relay_timestamp,
    }
    assert line == orjson.dumps(op).decode()


def test_frames_join_lines_up_to_the_limit_and_a_long_line_goes_alone() -> None:
    lines = ["a" * 4, "b" * 4, "c" * 4, "d" * 20, "e"]
    out = frames(lines, 9)
    assert [text for text, _, _ in out] == ["aaaa\nbbbb", "cccc", "d" * 20, "e"]
    assert [count for _, count, _ in out] == [2, 1, 1, 1]
    # sizes count the lines, not the separators: they are what the queue accounted
    assert [size for _, _, size in out] == [8, 4, 20, 1]
    assert sum(size for _, _, size in out) == sum(map(len, lines))


def test_one_line_is_one_frame_as_is() -> None:
    line = "x" * 100
    assert frames([line], 10) == [(line, 1, 100)]


async def test_a_suspended_send_is_finished_by_the_awaiting_task() -> None:
    gate = asyncio.Event()
    sent: list[str] = []

    async def send(text: str) -> None:
        await gate.wait()
        sent.append(text)

    coro = send("hello")
    waiting = coro.send(None)  # started outside any task: it stops at the gate
    task = asyncio.ensure_future(_await(coro, waiting))
    await asyncio.sleep(0)
    assert not task.done() and sent == []
    gate.set()
    await asyncio.wait_for(task, 1)
    assert sent == ["hello"]


async def _await(coro: object, waiting: object) -> None:
    await Resumed(coro, waiting)  # type: ignore[arg-type]


async def test_cancelling_the_finishing_task_cleans_up_the_send() -> None:
    gate = asyncio.Event()

    async def send() -> None:
        await gate.wait()

    coro = send()
    waiting = coro.send(None)
    task = asyncio.ensure_future(_await(coro, waiting))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    coro.close()
    assert not gate._waiters  # type: ignore[attr-defined]  # the waiter was removed


async def test_conn_sends_what_is_queued_in_one_frame_per_loop_turn() -> None:
    sent: list[str] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(str(message["text"]))

    conn = Conn(send, "i.1", "dev", "ref", frame_limit=1000, queue_limit=10_000)
    conn.holding = False
    for i in range(3):
        conn.push(f"line{i}")
    assert sent == []  # nothing goes out before the loop turn ends
    await asyncio.sleep(0)
    assert sent == ["line0\nline1\nline2"]
    assert conn.out_bytes == 0


async def test_conn_falls_back_to_a_task_while_the_transport_pushes_back() -> None:
    writable = asyncio.Event()
    sent: list[str] = []

    async def send(message: dict[str, object]) -> None:
        await writable.wait()
        sent.append(str(message["text"]))

    conn = Conn(send, "i.1", "dev", "ref", frame_limit=1000, queue_limit=10_000)
    conn.holding = False
    conn.push("first")
    await asyncio.sleep(0)
    conn.push("second")  # queued behind the waiting send, in order
    await asyncio.sleep(0)
    assert sent == []
    writable.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == ["first", "second"]
    assert conn.out_bytes == 0
    await conn.stop()
