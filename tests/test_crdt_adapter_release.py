"""A playlist document the server lets go of is freed (actors/crdt_adapter.py): the yrs document's
subscriptions hold the adapter only weakly. When they held the callbacks, the cycle ran through Rust
(document -> callback -> PlaylistDoc -> adapter -> document), the collector could not see it, and
every document an entity dropped (passivation, a lost lease, a reload) stayed in memory with its
yrs heap: ~47 KB of C heap a 20-track playlist, each time it was activated again."""
from __future__ import annotations

import gc
import weakref

from pycrdt import Array, Doc, Map

from actors.playlist_doc import Entry, PlaylistDoc


def _client_update() -> bytes:
    """A client's edit: one entry added under `tracks`."""
    d = Doc()
    d["tracks"] = tracks = Array()
    tracks.append(Map({"id": "e1", "uri": "spotify:track:" + "1" * 22, "added_by": "u", "added_at": 1.0}))
    return d.get_update()


def test_a_dropped_document_is_collected():
    pd = PlaylistDoc()
    pd.insert(0, [Entry(f"id{i}", "spotify:track:" + f"{i:022d}", "u", 1000 + i) for i in range(20)])
    pd.apply_remote(_client_update())            # the observers have run: they are subscribed
    ref = weakref.ref(pd)
    del pd
    gc.collect()
    assert ref() is None


def test_the_observers_still_report_after_the_change():
    pd = PlaylistDoc()
    before = len(pd._updates)
    change = pd.apply_remote(_client_update())
    assert [e.id for e in pd.entries] == ["e1"]                   # the tracks observer mirrored it
    assert change is not None and len(pd._updates) == before + 1  # the update observer saw it
