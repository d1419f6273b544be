"""The session's library change log (actors/session_records.py ChangeLog): bounded in items, packed
in memory, and answering `since` as the deque of named tuples did."""
from __future__ import annotations

import gc
import tracemalloc

import pytest

from actors.session_records import (
    ChangeLog,
    ItemChange,
    SessionSnapshot,
    pack_changes,
    unpack_changes,
)

IDS = [f"{i:022d}" for i in range(2000)]


def test_items_pack_and_unpack_as_they_were():
    changes = [ItemChange("s", 0, IDS[1], 1_764_590_000_000), ItemChange("r", 3, "ümlaut-id", None),
               ItemChange("s", 2, "", 0)]
    assert unpack_changes(pack_changes(changes)) == changes
    assert unpack_changes(pack_changes([])) == []


def test_the_oldest_records_go_first_and_the_floor_follows():
    log = ChangeLog(5)
    for v in range(1, 8):
        log.append(v, [ItemChange("s", 0, IDS[v], v)])
    assert log.items == 5 and log.floor == 2
    assert [v for v, _ in log] == [3, 4, 5, 6, 7]
    assert [(v, [c.id for c in ch]) for v, ch in log.since(5)] == [(6, [IDS[6]]), (7, [IDS[7]])]
    assert list(log.since(7)) == [] and len(list(log.since(2))) == 5
    big = [ItemChange("s", 0, IDS[k], k) for k in range(9)]
    log.append(8, big)                      # one record over the bound: it alone stays
    assert [v for v, _ in log] == [8] and log.items == 9 and log.floor == 7
    with pytest.raises(ValueError):
        ChangeLog(0)


def test_the_snapshot_form_is_unchanged():
    log = ChangeLog(512, [(4, [ItemChange("s", 0, IDS[0], 10)]), (6, [ItemChange("r", 1, IDS[1], None)])], floor=3)
    snap = SessionSnapshot(6, None, {}, {}, log, log.floor)
    wire = snap.to_wire()
    assert wire["changes"] == [{"version": 4, "changes": [["s", 0, IDS[0], 10]]},
                               {"version": 6, "changes": [["r", 1, IDS[1], None]]}]
    back = SessionSnapshot.from_wire(wire)
    again = ChangeLog(512, back.changes, back.changes_floor)
    assert list(again) == list(log) and again.floor == 3 and again.items == 2


def test_a_one_item_record_costs_under_120_bytes_resident():
    """~360 bytes an item when the log was a deque of (version, [ItemChange]) (bench_retention)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = ChangeLog(4000)
        for i in range(2000):                # each record as a decoded one: its own strings and ints
            log.append(1 + i, [ItemChange("s", 0, "".join(IDS[i]), 1_764_590_000_000 + i)])
        gc.collect()
        per_item = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    assert log.items == 2000
    print(f"{per_item:.0f} bytes an item")
    assert per_item < 120, per_item
