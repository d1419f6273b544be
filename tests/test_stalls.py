"""The opt-in stall recorder (syncopate/stalls.py) and its report (simulations/stall_report.py): a
long callback on the loop is a lag event with the stack that ran it, a collection above the
threshold is a gc event with its generation, both reach the process's file on CLOCK_MONOTONIC, and
the report says which stalls a slow sample met."""
from __future__ import annotations

import asyncio
import gc
import json
import time

from simulations.stall_report import explain
from syncopate import stalls


def test_off_without_the_variable(tmp_path):
    assert stalls.maybe_start("x", {}) is None


async def _block_until_sampled(rec: stalls.Recorder, deadline_s: float = 10.0) -> None:
    await asyncio.sleep(0.05)                # the probe runs and beats
    end = time.monotonic() + deadline_s
    while rec._stack is None and time.monotonic() < end:
        pass                                 # the long callback: until the watchdog has seen it


async def test_a_long_callback_is_a_lag_event_with_its_stack(tmp_path):
    rec = stalls.maybe_start("t", {stalls.ENV_DIR: str(tmp_path), stalls.ENV_MS: "5"})
    try:
        await _block_until_sampled(rec)
        await asyncio.sleep(0.05)            # the probe wakes late: the event
    finally:
        rec.stop()
        await asyncio.to_thread(rec.join)
    events = await asyncio.to_thread(stalls.load, str(tmp_path))
    lag = [e for e in events if e["kind"] == "lag"]
    assert lag, events
    assert any("_block_until_sampled" in line for e in lag for line in e.get("stack") or [])
    assert max(e["ms"] for e in lag) >= 5
    assert all(e["label"] == "t" and abs(e["t"] - time.monotonic()) < 60 for e in events)
    assert rec.stats()["stall_lag_count"] >= 1


async def test_a_collection_above_the_threshold_is_a_gc_event(tmp_path):
    rec = stalls.maybe_start("g", {stalls.ENV_DIR: str(tmp_path), stalls.ENV_MS: "0.0001"})
    try:
        junk = [[i] for i in range(200_000)]
        gc.collect()
        del junk
    finally:
        rec.stop()
        await asyncio.to_thread(rec.join)
    full = [e for e in await asyncio.to_thread(stalls.load, str(tmp_path)) if e["kind"] == "gc" and e["gen"] == 2]
    assert full and full[0]["cpu_ms"] >= 0 and full[0]["ms"] > 0
    assert rec.stats()["stall_gc"][2][0] >= 1


def test_the_threshold_must_be_positive(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="SYNCOPATE_STALLS_MS"):
        stalls.maybe_start("x", {stalls.ENV_DIR: str(tmp_path), stalls.ENV_MS: "0"})


def test_the_report_names_the_stall_a_slow_sample_met(tmp_path):
    lines = [{"label": "gateway-g1", "pid": 1, "kind": "gc", "t": 100.010, "ms": 40.0, "gen": 2},
             {"label": "host-0", "pid": 2, "kind": "lag", "t": 105.0, "ms": 8.0}]
    (tmp_path / "stalls-x-1.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples = [(100.000, 45.0),            # in flight 100.000-100.045: met the collection
               (100.200, 1.0),             # fast
               (103.000, 12.0)]            # slow, met nothing recorded
    out = "\n".join(explain(samples, str(tmp_path), slow_ms=10.0))
    assert "2 of 3 samples >= 10 ms" in out
    met = [x for x in out.splitlines() if x.strip().startswith("gateway-g1 gc gen2") and "met" in x]
    assert met and met[0].split()[3] == "1" and met[0].split()[5] == "1"      # 1 met, 1 alone
    assert [x for x in out.splitlines() if "(no stall recorded)" in x][0].split()[-1] == "1"
    assert not [x for x in out.splitlines() if x.strip().startswith("host-0 lag") and "met" in x]
