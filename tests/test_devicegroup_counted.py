"""The exactly-once window (actors/devicegroup_counted.py): a bounded FIFO set of 8-byte entries that
answers membership as the dicts it replaced did, evicts oldest first, hands back an evicted playback
id (the floor), reads snapshots of both forms, and costs ~9 bytes a key."""
from __future__ import annotations

import gc
import tracemalloc
import uuid

import msgpack

from actors.devicegroup_counted import CountedWindow


def test_membership_eviction_and_the_evicted_playback_id():
    w = CountedWindow(3)
    assert w.add(7) is None and w.add("e:abc") is None and w.add(9) is None
    assert 7 in w and "e:abc" in w and 9 in w and len(w) == 3
    assert 8 not in w and "e:abd" not in w and "7" not in w      # an int is not its text
    assert w.add(11) == 7                                         # the oldest goes: an int is handed back
    assert 7 not in w and len(w) == 3
    assert w.add(12) is None                                      # the evicted "e:abc" is not an int
    assert "e:abc" not in w
    assert w.add(12) is None and len(w) == 3                      # a key already in keeps its place
    assert w.to_wire() == [9, 11, 12]


def test_a_window_of_a_thousand_event_ids_matches_a_dict_window():
    ref: dict = {}
    w = CountedWindow(1000)
    ids = [uuid.UUID(int=i).hex for i in range(2500)]
    for k in ids:
        w.add(k)
        ref[k] = None
        if len(ref) > 1000:
            del ref[next(iter(ref))]
    assert len(w) == len(ref) == 1000
    assert all(k in w for k in ref) and not any(k in w for k in ids[:1500])


def test_the_snapshot_round_trips_and_reads_the_old_form():
    w = CountedWindow(10, [5, "e:x", "ev-1"])
    wire = msgpack.unpackb(msgpack.packb(w.to_wire(), use_bin_type=True), raw=False)
    back = CountedWindow(10, wire)
    assert back.to_wire() == w.to_wire() and "e:x" in back and 5 in back and "ev-1" in back
    # a snapshot from before the digests holds the keys themselves: the same window
    assert CountedWindow(10, [5, "e:x", "ev-1"]).to_wire() == wire
    assert len(CountedWindow(2, wire)) == 2                       # a smaller bound keeps the newest
    assert "e:x" in CountedWindow(2, wire) and 5 not in CountedWindow(2, wire)


def test_a_full_window_costs_under_12_bytes_a_key():
    keys = [uuid.uuid4().hex for _ in range(1000)]                # the caller's strings
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        w = CountedWindow(1000)
        for k in keys:
            w.add(k)
        gc.collect()
        per_key = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    print(f"{per_key:.1f} bytes a key")
    assert len(w) == 1000 and per_key < 12, per_key
