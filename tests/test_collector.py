"""Full collections on a schedule: automatic ones off, the scheduled ones run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator

import pytest

from infra.collector import NEVER, collect_forever, schedule_full_collections


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def test_only_full_collections_stop_being_automatic(thresholds: None) -> None:
    young, middle, _ = gc.get_threshold()
    schedule_full_collections()
    assert gc.get_threshold() == (young, middle, NEVER)


async def test_the_scheduled_full_collection_runs(thresholds: None) -> None:
    schedule_full_collections()
    before = full_collections()
    task = asyncio.ensure_future(collect_forever(period_s=0.01))
    try:
        deadline = time.monotonic() + 5
        while full_collections() == before:
            assert time.monotonic() < deadline, "no full collection ran"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_no_scheduled_collection_while_cpythons_rule_is_in_charge(
    thresholds: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    gc.disable()  # nothing automatic either, so any full collection would be ours
    try:
        before = full_collections()
        task = asyncio.ensure_future(collect_forever(period_s=0.01))
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert full_collections() == before
    finally:
        gc.enable()
