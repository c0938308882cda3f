"""The benchmark harness's pure parts: its devices are the ones the server will accept."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from infra.ids import device_id_of
from infra.validate import base64_size

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_devices_come_in_books_of_four_with_self_certifying_ids() -> None:
    run = load("run")
    devices = run.make_devices(8)
    assert [d["first"] for d in devices] == [True, False, False, False] * 2
    assert len({d["book_id"] for d in devices}) == 2
    for d in devices:
        raw = base64.b64decode(d["public_key"])
        assert base64_size(d["public_key"]) == 32
        assert d["device_id"] == device_id_of(raw)
        assert 16 <= len(d["book_id"]) <= 128


def test_only_devices_that_did_not_create_their_book_join_it() -> None:
    membership = load("membership")
    devices = load("run").make_devices(4)
    assert membership.joiners(devices) == [(d["device_id"], d["book_id"]) for d in devices[1:]]
