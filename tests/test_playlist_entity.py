"""PlaylistEntity (actors/playlist.py) alone, driven like the host drives it: ordering, snapshot_id
transforms, limits, roles, events and effects, replay and restart, Yjs sync and validation (Yjs
clients are separate pycrdt documents), the concurrent-move rule, and a delete concurrent with a
move winning in either arrival order."""
from __future__ import annotations


import pytest
from pycrdt import Array, Doc, Map, Text, UndoManager, merge_updates

from actors.entity import SYSTEM, Command, Env, Principal
from actors.playlist import PlaylistEntity
from actors.playlist_doc import PlaylistDoc, decode_state_vector, scan_update
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import PLAYLIST
from tests.support.playlist_entity import (CATALOG, PID, T0, UNKNOWN, Client, Harness, StoredFormsHarness, T, apply_delta,
                                           check_mirror, doc_json, state_of)


def make(n: int = 0, config: dict | None = None, public: bool = True, harness=Harness) -> Harness:
    h = harness(config=config)
    h.do("create", name="Road trip", public=public)
    if n:
        for s in range(0, n, 100):
            h.do("add", uris=[T(i) for i in range(s, min(n, s + 100))])
    return h


# ==========================================================================================
# create, read, shapes
# ==========================================================================================
def test_create_get_and_effects():
    h = Harness()
    out = h.do("create", name="Road trip", description="long drive")
    assert out.reply["name"] == "Road trip" and out.reply["owner"]["id"] == "alice"
    assert [(c.kind, c.entity_id, c.op, c.args) for c in out.effects] == [
        ("session", "alice", "playlist_created", {"playlist_id": PID})]
    g = h.reply("get", "alice")
    assert g == {"id": PID, "type": "playlist", "uri": f"spotify:playlist:{PID}", "name": "Road trip",
                 "description": "long drive", "public": True, "collaborative": False,
                 "owner": {"id": "alice", "type": "user", "uri": "spotify:user:alice"},
                 "followers": {"href": None, "total": 0}, "snapshot_id": g["snapshot_id"],
                 "tracks": {"total": 0}, "items": {"total": 0}, "version": 1}
    assert out.reply["snapshot_id"] == g["snapshot_id"]
    assert h.err("create", name="again").code == ErrorCode.CONFLICT
    check_mirror(h.e)


def test_missing_playlist_and_bad_args():
    h = Harness()
    for op in ("get", "items", "add", "follow", "yjs_sync"):
        assert h.err(op, uris=[T(1)]).code == ErrorCode.NOT_FOUND
    assert h.err("create", name="").code == ErrorCode.INVALID_FIELD
    assert h.err("create", name="x", public="yes").code == ErrorCode.INVALID_FIELD
    h.do("create", name="x")
    assert h.err("nope").code == ErrorCode.UNKNOWN_MESSAGE_TYPE      # one code for an unknown op, every entity
    assert h.err("items", limit=101).code == ErrorCode.BAD_REQUEST
    assert h.err("items", limit=0).code == ErrorCode.BAD_REQUEST
    assert h.err("add", uris=[]).code == ErrorCode.BAD_REQUEST
    assert h.err("add", uris=[T(i) for i in range(101)]).code == ErrorCode.BAD_REQUEST
    assert h.err("add", uris=["spotify:track:nope"]).code == ErrorCode.INVALID_URI
    assert h.err("add", uris=[f"spotify:album:{'a' * 22}"]).code == ErrorCode.INVALID_URI
    assert h.err("add", uris=[T(1), UNKNOWN]).code == ErrorCode.UNKNOWN_URI
    assert h.err("add", uris=[T(1)], position=1).code == ErrorCode.BAD_REQUEST
    assert h.e.doc.entries == [] and h.e.version == 1        # refusals changed nothing


# ==========================================================================================
# ordering
# ==========================================================================================
def test_add_positions_and_paging():
    h = make()
    h.do("add", uris=[T(1), T(2), T(3)])
    h.do("add", uris=[T(9)], position=1)
    h.do("add", uris=[T(8), T(7)], position=0)
    h.do("add", uris=[T(1)])                                  # the same track twice: a new entry
    assert h.uris() == [T(8), T(7), T(1), T(9), T(2), T(3), T(1)]
    assert len(set(h.ids())) == 7
    page = h.reply("items", offset=2, limit=3)
    assert page["total"] == 7 and page["offset"] == 2 and page["limit"] == 3
    assert [x["uri"] for x in page["items"]] == [T(1), T(9), T(2)]
    assert set(page["items"][0]) == {"entry_id", "uri", "added_by", "added_at"}
    assert page["items"][0]["added_by"] == "alice" and isinstance(page["items"][0]["added_at"], int)
    assert h.reply("items", offset=7)["items"] == []
    check_mirror(h.e)


@pytest.mark.parametrize("start,before,length,expect", [
    (0, 3, 1, [1, 2, 0, 3, 4]),        # Spotify's example: first item to before the 4th
    (4, 0, 1, [4, 0, 1, 2, 3]),
    (1, 5, 2, [0, 3, 4, 1, 2]),
    (3, 1, 2, [0, 3, 4, 1, 2]),
    (0, 5, 5, [0, 1, 2, 3, 4]),        # no-op
    (2, 3, 1, [0, 1, 2, 3, 4]),        # no-op: before its own successor
])
def test_reorder_like_spotify(start, before, length, expect):
    h = make(5)
    ids = h.ids()
    sid = h.reply("get")["snapshot_id"]
    r = h.reply("reorder", range_start=start, insert_before=before, range_length=length)
    assert h.uris() == [T(i) for i in expect]
    assert h.ids() == [ids[i] for i in expect]                # the same entries, moved
    if expect == [0, 1, 2, 3, 4]:
        assert r["snapshot_id"] == sid
    else:
        assert r["snapshot_id"] != sid
    check_mirror(h.e)


def test_reorder_bounds():
    h = make(3)
    assert h.err("reorder", range_start=3, insert_before=0).code == ErrorCode.BAD_REQUEST
    assert h.err("reorder", range_start=0, insert_before=4).code == ErrorCode.BAD_REQUEST
    assert h.err("reorder", range_start=1, insert_before=0, range_length=3).code == ErrorCode.BAD_REQUEST
    assert h.err("reorder", insert_before=0).code == ErrorCode.INVALID_FIELD


def test_replace_and_remove():
    h = make(4)
    h.do("add", uris=[T(1)])
    assert h.uris() == [T(0), T(1), T(2), T(3), T(1)]
    h.do("remove", tracks=[{"uri": T(1)}])                      # every occurrence
    assert h.uris() == [T(0), T(2), T(3)]
    h.do("add", uris=[T(2)])
    h.do("remove", tracks=[{"uri": T(2), "positions": [3]}])    # only that one
    assert h.uris() == [T(0), T(2), T(3)]
    assert h.err("remove", tracks=[{"uri": T(3), "positions": [0]}]).code == ErrorCode.BAD_REQUEST
    assert h.err("remove", tracks=[{"uri": T(3), "positions": [9]}]).code == ErrorCode.BAD_REQUEST
    v = h.e.version
    h.do("remove", items=[{"uri": T(55)}])                      # absent: nothing, no new version
    assert h.e.version == v
    h.do("replace", uris=[T(7), T(8)])
    assert h.uris() == [T(7), T(8)]
    h.do("replace", uris=[])
    assert h.uris() == []
    check_mirror(h.e)


# ==========================================================================================
# snapshot_id transforms
# ==========================================================================================
def test_snapshot_ids_change_and_are_opaque():
    h = make()
    seen = {h.reply("get")["snapshot_id"]}
    for op, args in [("add", {"uris": [T(1)]}), ("update_details", {"name": "n2"}), ("follow", {}),
                     ("reorder", {"range_start": 0, "insert_before": 1}), ("add", {"uris": [T(2)]})]:
        sid = h.reply(op, **args)["snapshot_id"]
        if op != "reorder":
            assert sid not in seen
        seen.add(sid)
    assert h.reply("get")["snapshot_id"] == sid


def test_reorder_at_old_snapshot_moves_the_same_entries():
    h = make(5)                                   # 0 1 2 3 4
    s0 = h.reply("get")["snapshot_id"]
    ids = h.ids()
    h.do("add", uris=[T(10), T(11)], position=0, who="alice")        # 10 11 0 1 2 3 4
    h.do("remove", tracks=[{"uri": T(4)}])                           # 10 11 0 1 2 3
    # as of s0: move 0,1 (positions 0..1) before position 4 (entry "4", now gone -> end)
    h.do("reorder", range_start=0, range_length=2, insert_before=4, snapshot_id=s0)
    assert h.uris() == [T(10), T(11), T(2), T(3), T(0), T(1)]
    assert h.ids()[4:] == ids[:2]
    # as of s0: move entry 3 before entry 1
    h.do("reorder", range_start=3, insert_before=1, snapshot_id=s0)
    assert h.uris() == [T(10), T(11), T(2), T(0), T(3), T(1)]
    check_mirror(h.e)


def test_remove_positions_at_old_snapshot():
    h = make()
    h.do("add", uris=[T(1), T(2), T(1)])
    s0 = h.reply("get")["snapshot_id"]
    keep = h.ids()[0]
    h.do("add", uris=[T(1)], position=0)                              # 1' 1 2 1
    h.do("remove", tracks=[{"uri": T(1), "positions": [2]}], snapshot_id=s0)   # the last of s0
    assert h.uris() == [T(1), T(1), T(2)] and h.ids()[1] == keep
    err = h.err("remove", tracks=[{"uri": T(1), "positions": [2]}], snapshot_id=s0)
    current = h.reply("get")["snapshot_id"]
    assert err.code == ErrorCode.CONFLICT and current in err.message and err.details["snapshot_id"] == current


def test_unknown_or_stale_snapshot_is_a_conflict():
    h = make(3)
    err = h.err("reorder", range_start=0, insert_before=2, snapshot_id="nope")
    assert err.code == ErrorCode.CONFLICT and err.details["snapshot_id"] == h.reply("get")["snapshot_id"]
    s0 = h.reply("get")["snapshot_id"]
    h.do("remove", tracks=[{"uri": T(0)}])
    err = h.err("reorder", range_start=0, insert_before=2, snapshot_id=s0)
    assert err.code == ErrorCode.CONFLICT
    # after a restart the current snapshot_id still works
    s1 = h.reply("get")["snapshot_id"]
    h.restart()
    assert h.reply("get")["snapshot_id"] == s1
    h.do("reorder", range_start=0, insert_before=2, snapshot_id=s1)
    assert h.uris() == [T(2), T(1)]


@pytest.mark.parametrize("how", ["snapshot", "replay", "snapshot+replay"])
def test_old_snapshot_ids_survive_restarts(how):
    """The history behind transforms is durable: after a restore (and replay) an old snapshot_id
    is transformed, not refused."""
    h = make(4)
    s0 = h.reply("get")["snapshot_id"]
    if how != "replay":
        h.do("add", uris=[T(9)], position=0)                  # 9 0 1 2 3
        h.do("reorder", range_start=4, insert_before=1)       # 9 3 0 1 2
        h.compact()
    if how != "snapshot":
        c = Client(h, "alice")
        c.sync()
        c.edit(lambda c: c.tracks.insert(0, c.entry("yjs1", T(50))))
        h.do("remove", tracks=[{"uri": T(1)}])
    h.restart()
    assert h.e._history
    before = h.uris()
    # positions 0 and 2 of s0 are T(0) and T(2), wherever they are now
    h.do("remove", tracks=[{"uri": T(0), "positions": [0]}, {"uri": T(2), "positions": [2]}], snapshot_id=s0)
    assert h.uris() == [u for u in before if u not in (T(0), T(2))]
    # ... and the snapshot_id of a change before the restart too
    h2 = make(3)
    mid = h2.reply("add", uris=[T(7)], position=0)["snapshot_id"]      # 7 0 1 2
    h2.do("reorder", range_start=3, insert_before=0)                   # 2 7 0 1
    h2.compact() if how != "replay" else None
    h2.restart()
    h2.do("reorder", range_start=0, insert_before=4, snapshot_id=mid)  # 7 to the end, as of mid
    assert h2.uris() == [T(2), T(0), T(1), T(7)]


def test_old_snapshots_and_logs_without_history_still_load():
    h = make(3, harness=StoredFormsHarness)                   # writes the older stored forms
    s0 = h.reply("get")["snapshot_id"]
    h.do("add", uris=[T(9)])
    h.compact()
    for key in ("history", "floor"):
        h.snap.pop(key)                                       # the shape before the history was kept
    h.restart()
    assert h.err("remove", tracks=[{"uri": T(0), "positions": [0]}], snapshot_id=s0).code == ErrorCode.CONFLICT
    s1 = h.reply("get")["snapshot_id"]
    s2 = h.reply("add", uris=[T(8)])["snapshot_id"]
    h.log = [[r for r in recs if r["t"] != "h"] for recs in h.log]     # older log entries: no "h"
    h.do("add", uris=[T(7)], position=0)
    h.restart()
    # through an entry without history nothing is transformed (refused); after it, it is
    assert h.err("remove", tracks=[{"uri": T(0), "positions": [0]}], snapshot_id=s1).code == ErrorCode.CONFLICT
    h.do("remove", tracks=[{"uri": T(0), "positions": [0]}], snapshot_id=s2)
    assert h.uris() == [T(7), T(1), T(2), T(9), T(8)]


def test_snapshot_transform_through_yjs_edits():
    h = make(3)
    s0 = h.reply("get")["snapshot_id"]
    c = Client(h, "alice")
    c.sync()
    c.edit(lambda c: c.tracks.insert(0, c.entry("yjs1", T(50))))
    c.edit(lambda c: c.move(3, 1))                                   # yjs1 0 1 2 -> yjs1 2 0 1
    assert h.uris() == [T(50), T(2), T(0), T(1)]
    h.do("remove", tracks=[{"uri": T(2), "positions": [2]}], snapshot_id=s0)
    assert h.uris() == [T(50), T(0), T(1)]


# ==========================================================================================
# limits
# ==========================================================================================
def test_ten_thousand_limit_refused_whole():
    h = make(9_950)
    assert len(h.e.doc.entries) == 9_950
    err = h.err("add", uris=[T(i) for i in range(51)])
    assert err.code == ErrorCode.LIMIT_EXCEEDED and "10000" in err.message
    assert len(h.e.doc.entries) == 9_950
    h.do("add", uris=[T(i) for i in range(50)])
    assert len(h.e.doc.entries) == 10_000
    assert h.err("add", uris=[T(1)]).code == ErrorCode.LIMIT_EXCEEDED
    # a Yjs client's insert beyond the limit is deleted again, the sender converges
    c = Client(h, "alice")
    c.sync()
    out = c.edit(lambda c: c.tracks.insert(3, c.entry("over1", T(5))))
    assert [r["code"] for r in out.reply["rejected"]] == ["LIMIT_EXCEEDED"]
    assert len(c.tracks) == 10_000 and "over1" not in h.e.doc.by_id
    # a move at the limit is fine
    first = h.ids()[0]
    c.edit(lambda c: c.move(0, 5))
    assert h.ids()[5] == first and len(h.e.doc.entries) == 10_000


def test_yjs_limit_refuses_all_new_entries_of_the_update():
    h = make(3, config={"playlist_max_entries": 5})
    c = Client(h, "alice")
    c.sync()
    out = c.edit(lambda c: c.tracks.extend([c.entry(f"n{i}", T(20 + i)) for i in range(3)]))
    assert out.reply["rejected"][0]["code"] == "LIMIT_EXCEEDED"
    assert h.uris() == [T(0), T(1), T(2)] and c.ids() == h.ids()
    # one push: no net change for app clients, the update and its correction for Yjs clients
    assert [(ev.payload["delta"], bool(ev.payload["update"])) for ev in out.events] == [([], True)]


# ==========================================================================================
# roles
# ==========================================================================================
def test_private_playlist_is_invisible():
    h = make(2, public=False)
    for op in ("get", "items", "subscribe", "yjs_sync", "follow", "entries"):
        assert h.err(op, "mallory").code == ErrorCode.NOT_FOUND
    h.do("set_collaborator", user_id="vera", role="viewer")
    assert h.reply("get", "vera")["name"] == "Road trip"
    assert h.reply("items", "vera")["total"] == 2
    h.do("update_details", public=True)
    assert h.reply("get", "mallory")["public"] is True


def test_roles_for_tracks_and_details():
    h = make(2)
    h.do("set_collaborator", user_id="ed", role="editor")
    h.do("set_collaborator", user_id="vera", role="viewer")
    for who in ("vera", "mallory"):
        assert h.err("add", who, uris=[T(5)]).code == ErrorCode.FORBIDDEN
        assert h.err("update_details", who, name="x").code == ErrorCode.FORBIDDEN
        assert h.err("reorder", who, range_start=0, insert_before=2).code == ErrorCode.FORBIDDEN
    h.do("add", "ed", uris=[T(5)])
    assert h.e.doc.entries[-1].added_by == "ed"
    h.do("update_details", "ed", name="Ed's", description="d")
    assert h.err("update_details", "ed", public=False).code == ErrorCode.FORBIDDEN
    assert h.err("update_details", "ed", collaborative=True).code == ErrorCode.FORBIDDEN
    assert h.reply("get")["name"] == "Ed's"
    for op, args in [("collaborators", {}), ("set_collaborator", {"user_id": "x", "role": "editor"}),
                     ("remove_collaborator", {"user_id": "vera"})]:
        assert h.err(op, "ed", **args).code == ErrorCode.FORBIDDEN
    assert h.reply("collaborators") == {"owner": "alice", "collaborators": [
        {"user_id": "ed", "role": "editor"}, {"user_id": "vera", "role": "viewer"}]}
    assert h.err("set_collaborator", user_id="x", role="admin").code == ErrorCode.INVALID_FIELD
    assert h.err("set_collaborator", user_id="alice", role="editor").code == ErrorCode.BAD_REQUEST
    h.do("remove_collaborator", user_id="ed")
    assert h.err("add", "ed", uris=[T(5)]).code == ErrorCode.FORBIDDEN
    h.do("update_details", public=False, collaborative=True)
    assert h.reply("get")["public"] is False and h.reply("get")["collaborative"] is True
    assert h.err("get", "ed").code == ErrorCode.NOT_FOUND
    assert h.err("add_listener", "alice", user_id="x").code == ErrorCode.FORBIDDEN


def test_follow_unfollow_effects():
    h = make()
    out = h.do("follow", "bob")
    assert out.reply["followers"] == 1
    assert [(c.kind, c.entity_id, c.op, c.args) for c in out.effects] == [
        ("session", "bob", "library_follow_playlist", {"playlist_id": PID})]
    assert out.events[0].payload["delta"] == [{"op": "followers", "total": 1}]
    again = h.do("follow", "bob")
    assert not again.records and not again.effects
    assert h.reply("get")["followers"]["total"] == 1
    out = h.do("follow", None, user_id="carol")                 # an effect from carol's session
    assert h.reply("get")["followers"]["total"] == 2
    out = h.do("unfollow", "bob")
    assert [(c.entity_id, c.op) for c in out.effects] == [("bob", "library_unfollow_playlist")]
    assert h.reply("get")["followers"]["total"] == 1
    assert not h.do("unfollow", "bob").records
    h.do("update_details", public=False)
    assert h.err("follow", "dave").code == ErrorCode.NOT_FOUND
    h.do("unfollow", None, user_id="carol")                     # a follower may leave a private one
    assert h.e.followers == set()


def test_listeners_get_context_changed():
    h = make(2)
    h.do("add_listener", None, user_id="bob")
    out = h.do("add", uris=[T(7)])
    (eff,) = out.effects
    assert (eff.kind, eff.entity_id, eff.op, eff.principal) == ("devicegroup", "bob", "context_changed", SYSTEM)
    assert eff.args["context_uri"] == f"spotify:playlist:{PID}"
    assert eff.args["entries"] == [[e.id, e.uri] for e in h.e.doc.entries]
    assert not h.do("update_details", name="x").effects                # not a track change
    assert h.reply("entries", None)["entries"] == eff.args["entries"]
    h.do("remove_listener", None, user_id="bob")
    assert not h.do("add", uris=[T(8)]).effects
    h.do("add_listener", None, user_id="carol")
    h.restart()
    assert h.e.listeners == {"carol"}


# ==========================================================================================
# events, subscribe
# ==========================================================================================
def test_events_carry_delta_and_update():
    h = make(3)
    watcher = Doc()
    watcher.apply_update(h.e.doc.full_update())
    order = h.ids()
    ops = [("add", {"uris": [T(5), T(6)], "position": 1}),
           ("reorder", {"range_start": 0, "insert_before": 4, "range_length": 2}),
           ("remove", {"tracks": [{"uri": T(2)}]}),
           ("replace", {"uris": [T(9), T(8)]}),
           ("update_details", {"description": "new"})]
    for op, args in ops:
        out = h.do(op, **args)
        (ev,) = out.events
        assert ev.type == "playlist.changed"
        p = ev.payload
        assert set(p) == {"snapshot_id", "total", "delta", "update"} and p["snapshot_id"] == out.reply["snapshot_id"]
        order = apply_delta(order, p["delta"])
        assert order == h.ids() and p["total"] == len(order)
        if p["update"]:
            watcher.apply_update(p["update"])
        assert [m["id"] for m in watcher.get("tracks", type=Array).to_py()] == h.ids()
    assert watcher.get("meta", type=Map)["description"] == "new"
    assert p["delta"] == [{"op": "details", "changes": {"description": "new"}}]


def test_subscribe_deltas_or_full_state():
    h = make(2)
    v0 = h.e.version
    h.do("add", uris=[T(3)])
    h.do("update_details", name="n")
    r = h.reply("subscribe", since=v0)
    assert r["mode"] == "deltas" and [d["version"] for d in r["deltas"]] == [v0 + 1, v0 + 2]
    assert r["snapshot_id"] == h.reply("get")["snapshot_id"] and r["version"] == h.e.version
    assert h.reply("subscribe", since=h.e.version)["deltas"] == []
    full = h.reply("subscribe")
    assert full["mode"] == "full" and [x["entry_id"] for x in full["items"]] == h.ids()
    assert full["playlist"]["name"] == "n"
    h.restart()
    assert h.reply("subscribe", since=v0)["mode"] == "full"          # history is in memory only
    assert h.reply("subscribe", since=h.e.version)["mode"] == "deltas"
    # a large gap falls back to the full state
    for i in range(140):
        h.do("update_details", name=f"n{i}")
    assert h.reply("subscribe", since=h.e.version - 130)["mode"] == "full"
    assert h.reply("subscribe", since=h.e.version - 100)["mode"] == "deltas"


# ==========================================================================================
# replay, snapshot, restart
# ==========================================================================================
def test_replay_from_records_and_from_snapshot():
    h = make(5)
    h.do("set_collaborator", user_id="ed", role="editor")
    h.do("follow", "bob")
    h.do("reorder", range_start=0, insert_before=5)
    c = Client(h, "ed")
    c.sync()
    c.edit(lambda c: c.tracks.insert(1, c.entry("e1", T(40))))
    c.edit(lambda c: c.tracks.insert(1, c.entry("bad", UNKNOWN)))      # corrected in the same entry
    c.edit(lambda c: c.meta.__setitem__("public", False))               # reverted
    assert state_of(h.reload()) == state_of(h.e)                        # all from records
    h.compact()
    h.do("remove", tracks=[{"uri": T(1)}])
    h.do("add", uris=[T(77)], position=2)
    h.do("remove_collaborator", user_id="ed")
    e2 = h.reload()                                                     # snapshot + records
    assert state_of(e2) == state_of(h.e)
    check_mirror(e2)
    assert e2.doc.client_id != h.e.doc.client_id
    assert e2.doc.client_id not in decode_state_vector(e2.doc.state_vector())


def test_restart_without_duplication():
    """A client synced before a restart reconnects with its own copy plus offline edits: the
    restored document has the same items (same Yjs ids), so nothing is duplicated."""
    h = make(3)
    c = Client(h, "alice")
    c.sync()
    c.edit(lambda c: c.tracks.append(c.entry("c1", T(30))))
    h.compact()
    h.do("add", uris=[T(31)])                                          # after the snapshot: a record
    h.restart()
    offline = c.edit_offline(lambda c: c.tracks.insert(0, c.entry("c2", T(32))))
    c.sync()                                                           # handshake: both directions
    assert c.ids() == h.ids()
    assert h.uris() == [T(32), T(0), T(1), T(2), T(30), T(31)]
    c.send(offline)                                                    # a resend is harmless
    assert len(h.e.doc.entries) == 6
    h.restart()
    c.sync()
    assert c.ids() == h.ids() and len(h.ids()) == 6
    check_mirror(h.e)


def test_server_client_id_is_fresh_after_restore():
    h = make(2)
    first = h.e.doc.client_id
    h.compact()
    seen = {first}
    for _ in range(3):
        h.restart()
        h.do("add", uris=[T(9)])
        h.compact()
        cid = h.e.doc.client_id
        assert cid not in seen
        seen.add(cid)
    assert set(decode_state_vector(h.e.doc.state_vector())) == seen


# ==========================================================================================
# Yjs: sync, valid and invalid edits
# ==========================================================================================
def test_yjs_sync_and_valid_edits_reach_everyone():
    h = make(2)
    h.do("set_collaborator", user_id="ed", role="editor")
    a, b = Client(h, "alice"), Client(h, "ed")
    a.sync()
    b.sync()
    assert a.ids() == b.ids() == h.ids()
    assert a.meta["name"] == "Road trip"
    h.events.clear()
    out = b.edit(lambda c: c.tracks.insert(1, c.entry("ed1", T(20))))
    assert out.reply["update"] == b"" and out.reply["rejected"] == []
    (ev,) = out.events
    assert ev.payload["delta"] == [{"op": "insert", "index": 1, "items": [
        {"entry_id": "ed1", "uri": T(20), "added_by": "ed", "added_at": T0}]}]
    a.receive(out.events)
    assert a.ids() == h.ids() == b.ids()
    out = a.edit(lambda c: c.meta.__setitem__("name", "Renamed"))
    assert h.reply("get")["name"] == "Renamed" and out.events[0].payload["delta"] == [
        {"op": "details", "changes": {"name": "Renamed"}}]
    out = b.edit(lambda c: c.tracks.__delitem__(0))
    assert out.events[0].payload["delta"][0]["op"] == "delete" and len(h.ids()) == 2
    # REST edits reach Yjs clients through the event's update
    h.do("add", uris=[T(21)], position=0)
    a.receive(h.events)
    assert a.ids() == h.ids()
    r = h.reply("yjs_sync", "ed", state_vector=b.doc.get_state())
    assert r["readonly"] is False
    h.do("set_collaborator", user_id="vera", role="viewer")
    assert h.reply("yjs_sync", "vera")["readonly"] is True
    assert h.reply("yjs_sync", "mallory")["readonly"] is True       # public: readable by anyone
    check_mirror(h.e)


def converge(h: Harness, sender: Client, *others: Client) -> None:
    """Everybody applies what was pushed; all replicas equal the server's document."""
    for o in others:
        o.receive(h.events)
    h.events.clear()
    truth = doc_json(h.e.doc)
    for c in (sender, *others):
        assert c.json() == truth
    check_mirror(h.e)


@pytest.mark.parametrize("label,fn,code", [
    ("wrong type", lambda c: c.tracks.append(Map({"id": "w1", "uri": T(3), "added_by": "ed", "added_at": "now"})),
     "INVALID_FIELD"),
    ("not a map", lambda c: c.tracks.append("spotify:track:" + "1" * 22), "INVALID_FIELD"),
    ("missing key", lambda c: c.tracks.append(Map({"id": "w2", "uri": T(3), "added_by": "ed"})), "INVALID_FIELD"),
    ("extra key", lambda c: c.tracks.append(Map({"id": "w3", "uri": T(3), "added_by": "ed", "added_at": 1.0,
                                                 "x": 1})), "INVALID_FIELD"),
    ("bad id", lambda c: c.tracks.append(c.entry("has space", T(3))), "INVALID_FIELD"),
    ("malformed uri", lambda c: c.tracks.append(c.entry("w4", "spotify:track:short")), "INVALID_URI"),
    ("album uri", lambda c: c.tracks.append(c.entry("w5", "spotify:album:" + "a" * 22)), "INVALID_URI"),
    ("unknown uri", lambda c: c.tracks.append(c.entry("w6", UNKNOWN)), "UNKNOWN_URI"),
    ("forged added_by", lambda c: c.tracks.append(c.entry("w7", T(3), by="alice")), "FORBIDDEN"),
    ("added_at in the future", lambda c: c.tracks.append(c.entry("w8", T(3), at=T0 * 3)), "INVALID_FIELD"),
    ("forged copy of an id", lambda c: c.tracks.append(c.entry(c.ids()[0], T(3), by="alice")), "INVALID_FIELD"),
    ("nested type uri", lambda c: c.tracks.append(Map({"id": "w9", "uri": Map({"a": 1}), "added_by": "ed",
                                                       "added_at": 1.0})), "INVALID_FIELD"),
    ("public by non-owner", lambda c: c.meta.__setitem__("public", False), "FORBIDDEN"),
    ("collaborative by non-owner", lambda c: c.meta.__setitem__("collaborative", True), "FORBIDDEN"),
    ("name wrong type", lambda c: c.meta.__setitem__("name", 5.0), "INVALID_FIELD"),
    ("empty name", lambda c: c.meta.__setitem__("name", ""), "INVALID_FIELD"),
    ("meta key deleted", lambda c: c.meta.pop("description"), "INVALID_FIELD"),
    ("unknown meta key", lambda c: c.meta.__setitem__("color", "red"), "INVALID_FIELD"),
    ("edit existing uri", lambda c: c.tracks[0].__setitem__("uri", T(4)), "FORBIDDEN"),
    ("edit existing added_by", lambda c: c.tracks[1].__setitem__("added_by", "ed"), "FORBIDDEN"),
    ("delete existing key", lambda c: c.tracks[0].pop("added_at"), "FORBIDDEN"),
    ("extra key on existing", lambda c: c.tracks[0].__setitem__("x", 1), "FORBIDDEN"),
])
def test_invalid_yjs_edits_are_corrected(label, fn, code):
    h = make(3)
    h.do("set_collaborator", user_id="ed", role="editor")
    ed, other = Client(h, "ed"), Client(h, "alice")
    ed.sync()
    other.sync()
    before = state_of(h.e)
    h.events.clear()

    def edit(c):
        fn(c)
        c.tracks.append(c.entry("fine1", T(9)))          # a valid edit in the same update survives

    out = ed.edit(edit)
    assert [r["code"] for r in out.reply["rejected"]] == [code], out.reply["rejected"]
    assert out.reply["update"]                                  # the correction for the sender
    after = state_of(h.e)
    assert after["meta"] == before["meta"]
    assert [r[:3] for r in after["entries"]] == [r[:3] for r in before["entries"]] + [["fine1", T(9), "ed"]]
    (ev,) = out.events
    assert ev.payload["delta"] == [{"op": "insert", "index": 3, "items": [
        {"entry_id": "fine1", "uri": T(9), "added_by": "ed", "added_at": T0}]}]
    converge(h, ed, other)
    assert state_of(h.reload()) == state_of(h.e)             # records replay to the valid state


def test_owner_may_change_public_over_yjs():
    h = make(1)
    c = Client(h, "alice")
    c.sync()
    out = c.edit(lambda c: (c.meta.__setitem__("public", False), c.meta.__setitem__("collaborative", True)))
    assert out.reply["rejected"] == [] and h.reply("get")["public"] is False
    assert out.events[0].payload["delta"] == [{"op": "details", "changes": {"public": False, "collaborative": True}}]


def test_viewer_and_stranger_yjs_edits_refused_whole():
    h = make(2)
    h.do("set_collaborator", user_id="vera", role="viewer")
    for who in ("vera", "mallory"):
        c = Client(h, who)
        c.sync()
        before = state_of(h.e)
        v = h.e.version
        upd = c.edit_offline(lambda c: c.tracks.append(c.entry("v1", T(5))))
        with pytest.raises(SyncopateError) as ei:
            h.do("yjs_update", who, update=upd)
        assert ei.value.code == ErrorCode.FORBIDDEN
        assert state_of(h.e) == before and h.e.version == v


def test_malformed_update_changes_nothing():
    h = make(2)
    before = state_of(h.e)
    for junk in (b"\x01\x05garbage", b"\xff" * 10):
        assert h.err("yjs_update", update=junk).code == ErrorCode.BAD_REQUEST
    assert h.err("yjs_update", update="text").code == ErrorCode.INVALID_FIELD
    assert h.err("yjs_sync", state_vector=b"\xff\xff").code == ErrorCode.BAD_REQUEST
    assert state_of(h.e) == before


def test_junk_roots_are_cleared():
    h = make(1)
    c = Client(h, "alice")
    c.sync()
    c.edit(lambda c: c.doc.get("junk", type=Map).__setitem__("k", "v"))
    assert c.doc.get("junk", type=Map).to_py() == {}


FOREIGN = {
    "text": lambda c: c.doc.get("junk", type=Text).insert(0, "secret text"),
    "array": lambda c: c.doc.get("junk", type=Array).extend(["secret", 1.0, Map({"k": "secret"})]),
    "map": lambda c: c.doc.get("junk", type=Map).__setitem__("k", "secret"),
    "keys_on_tracks": lambda c: c.doc.get("tracks", type=Map).__setitem__("k", "secret"),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
@pytest.mark.parametrize("restart", [None, "replay", "snapshot"])
def test_content_outside_the_schema_is_deleted_and_never_sent(kind, restart):
    """A Yjs root other than the schema's (any type) or keys on `tracks`: applied (refusing it
    would stall the client's later updates) and its items deleted in the same log entry; the
    sender converges, and no new client, before or after a restart, ever receives the content."""
    h = make(2)
    c = Client(h, "alice")
    c.sync()
    upd = c.edit_offline(lambda c: (FOREIGN[kind](c), c.tracks.append(c.entry("ok1", T(5)))))
    out = c.send(upd)
    assert [r["code"] for r in out.reply["rejected"]] == ["INVALID_FIELD"]
    assert h.ids()[-1] == "ok1"                                    # the valid part stays
    assert b"secret" not in h.e.doc.full_update()
    (y,) = [r for r in h.log[-1] if r["t"] == "y"]
    assert len(y["u"]) == 2                                          # update + correction, one entry
    # the push carries update + correction: a client applying it holds no live foreign content
    other = Doc()
    other.apply_update(h.e.doc.full_update())
    other.apply_update(out.events[0].payload["update"])
    assert b"secret" not in other.get_update()
    # more content chained onto the deleted items (they stay known as foreign) is deleted too
    if kind == "text":
        c.edit(lambda c: c.doc.get("junk", type=Text).insert(0, "more secret"))
    if restart == "snapshot":
        h.compact()
    if restart:
        h.restart()
    if kind == "array":
        out = c.edit(lambda c: c.doc.get("junk", type=Array).append("late secret"))
        assert out.reply["rejected"]
    assert b"secret" not in h.e.doc.full_update()
    fresh = Client(h, "bob")
    fresh.sync()
    assert b"secret" not in fresh.doc.get_update()
    assert fresh.json() == c.json() == doc_json(h.e.doc)
    check_mirror(h.e)
    assert state_of(h.reload()) == state_of(h.e)


def test_old_snapshots_without_foreign_ranges_still_know_them():
    h = make(1, harness=StoredFormsHarness)                   # writes the older stored form
    c = Client(h, "alice")
    c.sync()
    c.edit(lambda c: c.doc.get("junk", type=Array).append("secret"))
    h.compact()
    h.snap.pop("foreign")
    h.restart()
    out = c.edit(lambda c: c.doc.get("junk", type=Array).append("late secret"))
    assert out.reply["rejected"] and b"secret" not in h.e.doc.full_update()


def test_max_update_bytes_is_the_gateways_frame_limit():
    from protocols.limits import MAX_FRAME_BYTES
    h = make(0)
    assert h.e.max_update_bytes == MAX_FRAME_BYTES == 1 << 20
    assert h.err("yjs_update", update=b"\x00" * (MAX_FRAME_BYTES + 1)).code == ErrorCode.FRAME_TOO_LARGE


def test_duplicate_update_is_a_noop():
    h = make(1)
    c = Client(h, "alice")
    c.sync()
    upd = c.edit_offline(lambda c: c.tracks.append(c.entry("d1", T(5))))
    first = h.do("yjs_update", "alice", update=upd)
    v = h.e.version
    again = h.do("yjs_update", "alice", update=upd)
    assert not again.records and h.e.version == v and again.reply["snapshot_id"] == first.reply["snapshot_id"]


def test_undo_of_a_delete_restores_the_entry():
    """A Yjs undo re-inserts a copy of a deleted entry (same id, same content, the original
    added_by): accepted as the same entry, not as a forgery."""
    h = make(2)
    h.do("set_collaborator", user_id="ed", role="editor")
    c = Client(h, "ed")
    c.sync()
    gone = c.tracks[0].to_py()
    c.edit(lambda c: c.tracks.__delitem__(0))
    out = c.edit(lambda c: c.tracks.insert(0, Map(gone)))
    assert out.reply["rejected"] == [] and h.ids()[0] == gone["id"]
    assert h.e.doc.entries[0].added_by == "alice"


# ==========================================================================================
# the concurrent-move rule
# ==========================================================================================
def test_concurrent_moves_keep_exactly_one_copy():
    h = make(5)
    h.do("set_collaborator", user_id="ed", role="editor")
    a, b = Client(h, "alice", client_id=1000), Client(h, "ed", client_id=2000)
    a.sync()
    b.sync()
    moved = a.ids()[0]
    ua = a.edit_offline(lambda c: c.move(0, 4))          # a: to the end
    ub = b.edit_offline(lambda c: c.move(0, 2))          # b: to the middle, concurrently
    h.events.clear()
    a.send(ua)
    b.send(ub)
    assert h.ids().count(moved) == 1
    # the copy with the greatest Yjs item id wins: client 2000's (b's)
    assert h.ids().index(moved) == 2
    a.receive(h.events)
    b.receive(h.events)
    assert a.ids() == b.ids() == h.ids()
    converge(h, a, b)
    # the same in the other arrival order gives the same result
    h2 = make(5)
    h2.do("set_collaborator", user_id="ed", role="editor")
    a2, b2 = Client(h2, "alice", client_id=1000), Client(h2, "ed", client_id=2000)
    a2.sync()
    b2.sync()
    ua = a2.edit_offline(lambda c: c.move(0, 4))
    ub = b2.edit_offline(lambda c: c.move(0, 2))
    b2.send(ub)
    a2.send(ua)
    assert [e.uri for e in h2.e.doc.entries] == h.uris()


def test_move_concurrent_with_a_delete_delete_wins():
    h = make(4)
    h.do("set_collaborator", user_id="ed", role="editor")
    c = Client(h, "ed")
    c.sync()
    victim = h.ids()[1]
    offline = c.edit_offline(lambda c: c.move(1, 3))
    h.events.clear()
    h.do("remove", tracks=[{"uri": T(1)}])                # alice deletes it meanwhile
    out = c.send(offline)
    assert [r["code"] for r in out.reply["rejected"]] == ["CONFLICT"]
    assert victim not in h.ids() and len(h.ids()) == 3
    c.receive(h.events)
    assert c.ids() == h.ids()
    # ... and after a restart the graveyard (and who deleted what) is still known
    h.compact()
    h.restart()
    again = c.edit_offline(lambda c: c.tracks.insert(0, c.entry(victim, T(1), by="alice")))
    assert [r["code"] for r in c.send(again).reply["rejected"]] == ["CONFLICT"]
    assert victim not in h.ids() and c.ids() == h.ids()


def test_rest_reorder_concurrent_with_a_client_move():
    h = make(4)
    c = Client(h, "alice")
    c.sync()
    moved = h.ids()[1]
    offline = c.edit_offline(lambda c: c.move(1, 3))
    h.events.clear()
    h.do("reorder", range_start=1, insert_before=0)       # the server moves it too
    c.send(offline)
    assert h.ids().count(moved) == 1 and len(h.ids()) == 4
    c.receive(h.events)
    assert c.ids() == h.ids()
    check_mirror(h.e)


# ==========================================================================================
# a delete concurrent with a move wins, whatever the arrival order
# ==========================================================================================
def three(n: int = 4):
    """A playlist of n entries, alice (owner) and the editors ed and eve, each with a synced Yjs client."""
    h = make(n)
    for u in ("ed", "eve"):
        h.do("set_collaborator", user_id=u, role="editor")
    cs = [Client(h, u) for u in ("alice", "ed", "eve")]
    for c in cs:
        c.sync()
    h.events.clear()
    return h, cs


def delete_id(eid: str):
    def fn(c):
        del c.tracks[c.ids().index(eid)]
    return fn


def move_id(eid: str, to: int):
    def fn(c):
        c.move(c.ids().index(eid), to)
    return fn


def settle(h: Harness, *cs: Client) -> None:
    """Everybody receives every push; all replicas equal the server's valid document."""
    for c in cs:
        c.receive(h.events)
    h.events.clear()
    truth = doc_json(h.e.doc)
    for c in cs:
        assert c.json() == truth, c.user
    check_mirror(h.e)
    assert state_of(h.reload()) == state_of(h.e)


@pytest.mark.parametrize("delete_via", ["update", "reconnect"])
@pytest.mark.parametrize("move_first", [True, False])
def test_yjs_delete_concurrent_with_a_yjs_move_wins_in_both_orders(move_first, delete_via):
    h, (a, b, _) = three()
    x = h.ids()[1]
    moved = a.edit_offline(move_id(x, 3))
    deleted = b.edit_offline(delete_id(x))

    def deliver_delete():
        return b.send(deleted) if delete_via == "update" else b.sync()    # a SyncStep2: the whole delete set

    if move_first:
        a.send(moved)
        assert h.ids()[3] == x
        out = deliver_delete()
        assert out.reply["update"] and out.reply["rejected"] == []          # the correction deletes the copy
        (ev,) = out.events
        assert ev.payload["delta"] == [{"op": "delete", "index": 3, "entry_ids": [x]}]
    else:
        deliver_delete()
        out = a.send(moved)
        assert [r["code"] for r in out.reply["rejected"]] == ["CONFLICT"]
    assert x not in h.ids() and len(h.ids()) == 3
    settle(h, a, b)
    assert h.e.doc.graveyard[x][1] == "ed"                                   # who deleted it (undo)


def test_the_outcome_is_the_same_in_both_orders():
    finals = []
    for move_first in (True, False):
        h, (a, b, _) = three(5)
        ids = h.ids()
        moves = [a.edit_offline(move_id(ids[1], 4)), a.edit_offline(move_id(ids[3], 0))]
        deleted = b.edit_offline(lambda c, ids=ids: (delete_id(ids[1])(c), delete_id(ids[2])(c)))
        for u in (moves + [deleted] if move_first else [deleted] + moves):
            (b if u is deleted else a).send(u)
        settle(h, a, b)
        finals.append([e.uri for e in h.e.doc.entries])
    assert finals[0] == finals[1] == [T(3), T(0), T(4)]


def test_a_delete_after_several_moves_and_a_restart_still_wins():
    h, (a, b, c) = three(5)
    x = h.ids()[2]
    deleted = c.edit_offline(delete_id(x))             # eve deletes the entry she saw, offline
    a.edit(move_id(x, 0))                               # alice moves it ...
    b.receive(h.events)
    b.edit(move_id(x, 4))                               # ... ed (who saw that) moves it again
    h.do("reorder", range_start=4, insert_before=1)     # ... and a REST reorder
    h.compact()
    h.restart()                                         # the moved-away items survive a restart
    assert len(h.e.doc.tomb) == 3
    c.send(deleted)
    assert x not in h.ids() and len(h.ids()) == 4
    settle(h, a, b, c)


@pytest.mark.parametrize("delete_via", ["update", "reconnect"])
def test_yjs_delete_concurrent_with_a_rest_reorder_wins(delete_via):
    h, (_, b, _) = three()
    ids = h.ids()
    deleted = b.edit_offline(delete_id(ids[1]))
    h.do("reorder", range_start=1, insert_before=4)          # REST moves it to the end meanwhile
    assert h.ids() == [ids[0], ids[2], ids[3], ids[1]]
    b.send(deleted) if delete_via == "update" else b.sync()
    assert h.ids() == [ids[0], ids[2], ids[3]]
    settle(h, b)


def test_a_client_that_saw_the_move_deletes_nothing_by_knowing_it():
    """A SyncStep2 carries the client's whole delete set, moved-away items included: a client that
    held the moved copy when it connected only knows the old item is gone."""
    h, (a, b, c) = three()
    x = h.ids()[1]
    a.edit(move_id(x, 3))
    b.receive(h.events)                           # ed saw the move (a push) ...
    b.sync()                                      # ... and reconnects: nothing is deleted
    c.edit_offline(lambda c: c.tracks.append(c.entry("e1", T(9))))
    c.sync()                                      # eve was offline during the move, deleted nothing
    assert x in h.ids() and len(h.ids()) == 5 and "e1" in h.ids()
    b.edit(lambda c: c.tracks.append(c.entry("e2", T(8))))     # an unrelated edit later
    assert x in h.ids() and len(h.ids()) == 6
    settle(h, a, b, c)


def test_concurrent_moves_and_a_late_reconnect_keep_one_copy():
    """Concurrent moves (one arriving by SyncStep2, delete set and all) keep exactly one copy: a
    client's update that moves the entry too is not a delete of it."""
    h, (a, b, c) = three(5)
    d = Client(h, "ed")                           # ed's second device
    d.sync()
    x = h.ids()[0]
    ua = a.edit_offline(move_id(x, 4))
    b.edit_offline(move_id(x, 2))
    c.edit_offline(move_id(x, 1))
    late = d.edit_offline(delete_id(x))
    a.send(ua)
    b.sync()                                      # ed reconnects: move + the whole delete set
    c.sync()
    assert h.ids().count(x) == 1 and len(h.ids()) == 5
    settle(h, a, b, c)
    # the losing copies are moved-away items too: a delete that saw none of the moves still wins
    d.send(late)
    assert x not in h.ids() and len(h.ids()) == 4
    settle(h, a, b, c, d)


def test_a_delete_of_a_losing_copy_still_wins():
    """alice and ed move the entry concurrently; ed's copy loses (the greatest item id wins) and,
    before ed learns that, ed deletes its copy: the delete wins over alice's move."""
    h = make(4)
    h.do("set_collaborator", user_id="ed", role="editor")
    a, b = Client(h, "alice", client_id=2000), Client(h, "ed", client_id=1000)
    a.sync()
    b.sync()
    x = h.ids()[1]
    ua = a.edit_offline(move_id(x, 3))
    ub = b.edit_offline(move_id(x, 0))
    ub2 = b.edit_offline(delete_id(x))
    a.send(ua)
    b.send(ub)                                    # loses to alice's copy (client 2000 > 1000)
    assert h.ids().count(x) == 1 and h.ids()[3] == x
    b.send(ub2)
    assert x not in h.ids()
    settle(h, a, b)


def test_a_move_held_back_for_a_missing_update_is_not_a_delete():
    """yrs holds back an update that depends on one it lacks: its delete set already shows, its copy
    does not yet. A move is still a move."""
    h, (a, b, _) = three()
    x = h.ids()[1]
    u1 = b.edit_offline(lambda c: c.tracks.append(c.entry("n1", T(9))))
    u2 = b.edit_offline(move_id(x, 4))                # after n1: depends on u1
    a.edit(move_id(x, 0))
    out = b.send(u2)
    assert not out.records and h.ids()[0] == x       # held, nothing deleted
    b.send(u1)
    assert h.ids().count(x) == 1 and "n1" in h.ids() and len(h.ids()) == 5
    settle(h, a, b)


def test_undo_of_a_delete_still_restores_after_moves():
    """A Yjs UndoManager undo of a delete re-inserts the entry (the deleter's own copy), also when
    the deleted entry had been moved before, and the undone delete is not taken for a late one."""
    h, (a, b, _) = three()
    x = h.ids()[1]
    a.edit(move_id(x, 3))
    b.receive(h.events)
    um = UndoManager(scopes=[b.tracks], capture_timeout_millis=0)
    b.edit(delete_id(x))
    assert x not in h.ids()
    b._capture = True
    try:
        um.undo()
    finally:
        b._capture = False
    (undo,), b._out = b._out, []
    out = b.send(undo)
    assert out.reply["rejected"] == [] and h.ids()[3] == x
    assert h.e.doc.by_id[x].added_by == "alice"
    a.receive(h.events)
    b.sync()                                      # reconnecting (whole delete set) changes nothing
    assert h.ids()[3] == x and len(h.ids()) == 4
    settle(h, a, b)


def test_scan_update_reads_item_ids_clocks_and_deletes():
    d = Doc(client_id=7)
    tracks, junk = d.get("tracks", type=Array), d.get("junk", type=Text)
    for i in range(6):
        tracks.append(Map({"id": f"e{i}", "uri": T(i), "added_by": "a", "added_at": 1.0}))
    junk += "a\U0001F600b"                          # clocks count UTF-16 units
    d.get("junk2", type=Map)["k"] = {"a": [1, 2.5, None, True, "x"], "b": -300}
    del tracks[1]
    tracks.append(Map({"id": "e9", "uri": T(9), "added_by": "a", "added_at": 2.0}))
    u = d.get_update()
    s = scan_update(u)
    assert s.ends == decode_state_vector(d.get_state())
    assert s.deletes == [(7, 5, 5)]
    pd = PlaylistDoc(u)
    for p, e in enumerate(pd.entries):
        assert s.ids[e.id] == [pd.item_id(p)] == [e.yid]
    with pytest.raises(ValueError):
        scan_update(u[:len(u) // 2])


def test_item_ids_survive_snapshots_old_and_new():
    h, (a, _, _) = three(6)
    a.edit(move_id(h.ids()[0], 5))
    h.do("reorder", range_start=0, insert_before=3)
    h.compact()
    assert all(len(r) == 6 for r in h.snap["rows"]) and h.snap["tomb"]
    h.restart()
    check_mirror(h.e)
    assert all(e.yid is not None for e in h.e.doc.entries) and len(h.e.doc.tomb) == 2
    old = dict(h.snap, rows=[r[:4] for r in h.snap["rows"]])          # rows without item ids
    old.pop("tomb")
    e2 = PlaylistEntity(PID, h.env)
    e2.restore(old)
    assert [e.yid for e in e2.doc.entries] == [e.yid for e in h.e.doc.entries]


def test_offline_edits_merge_on_reconnect():
    h = make(4)
    h.do("set_collaborator", user_id="ed", role="editor")
    a, b = Client(h, "alice"), Client(h, "ed")
    a.sync()
    b.sync()
    gone = b.ids()[2]
    ub1 = b.edit_offline(lambda c: c.tracks.insert(0, c.entry("b1", T(50))))
    ub2 = b.edit_offline(lambda c: c.tracks.__delitem__(3))              # deletes the 3rd original
    a.edit(lambda c: c.tracks.append(c.entry("a1", T(60))))
    h.do("add", uris=[T(61)], position=1)
    b.sync()                                                            # reconnect: handshake
    a.receive(h.events)
    assert "b1" in h.ids() and "a1" in h.ids() and gone not in h.ids()
    assert a.ids() == b.ids() == h.ids()
    assert len(h.ids()) == 4 + 3 - 1
    del ub1, ub2


# ==========================================================================================
# performance smoke (the benchmark is simulations/bench_playlist.py)
# ==========================================================================================
def test_a_bulk_add_of_ten_thousand_entries_lands_whole():
    """10,000 entries in one insert: all there, the mirror consistent. How fast is a benchmark's
    question (python -m simulations.bench_playlist), not a unit test's: a wall-clock limit here
    failed whenever the machine was busy."""
    h = make()
    e = h.e
    ents = e._new_entries([T(i) for i in range(10_000)], "alice", T0)
    e.doc.insert(0, ents)
    e.doc.finish()
    assert len(e.doc.entries) == 10_000
    check_mirror(e)


def test_out_of_order_updates_wait_for_their_dependencies():
    """An update that depends on items the server lacks is held by the CRDT (not integrated, not
    stored); it is integrated, validated and stored with the update that completes it."""
    h = make(1)
    c = Client(h, "alice")
    c.sync()
    u1 = c.edit_offline(lambda c: c.tracks.append(c.entry("a", T(5))))
    u2 = c.edit_offline(lambda c: c.tracks.append(c.entry("b", T(6), by="mallory")))
    v = h.e.version
    out = h.do("yjs_update", "alice", update=u2)
    assert not out.records and h.e.version == v and len(h.ids()) == 1
    out = c.send(u1)
    assert [r["code"] for r in out.reply["rejected"]] == ["FORBIDDEN"]
    assert h.ids()[1:] == ["a"] and c.ids() == h.ids()
    assert state_of(h.reload()) == state_of(h.e)


def test_a_valid_edit_reads_the_update_once(monkeypatch):
    """The usual update (nothing already known, nothing held back) is integrated as sent: its one
    scan_update serves both the checks before yrs sees it and the mirror's item ids after."""
    import actors.playlist_doc as playlist_doc
    import actors.playlist_yjs as playlist_yjs
    read = []

    def counting(update, **kw):
        read.append(update)
        return scan_update(update, **kw)
    monkeypatch.setattr(playlist_yjs, "scan_update", counting)
    monkeypatch.setattr(playlist_doc, "scan_update", counting)
    h = make(1)
    c = Client(h, "alice")
    c.sync()
    out = c.edit(lambda c: c.tracks.append(c.entry("a", T(5))))
    assert out.reply["rejected"] == [] and h.ids()[1:] == ["a"] and c.ids() == h.ids()
    assert h.e.doc.by_id["a"].yid is not None          # the item id came from that one scan
    assert len(read) == 1


def test_snapshot_of_an_internal_change_stays_usable():
    h = make(3)
    h.do("add_listener", None, user_id="bob")                 # a version without a push
    sid = h.reply("get")["snapshot_id"]
    h.do("add", uris=[T(9)], position=0)
    h.do("reorder", range_start=0, insert_before=2, snapshot_id=sid)      # entry "0" before "2"
    assert h.uris() == [T(9), T(1), T(0), T(2)]


# ==========================================================================================
# on the real host (actors/host.py): pipelined commands, group commit, snapshot, restart
# ==========================================================================================
async def test_on_the_entity_host_with_a_restart():
    import asyncio

    from actors.host import EntityHost
    from storage.memory import MemoryStore

    store = MemoryStore()
    env = Env(catalog=CATALOG)
    kinds = {PLAYLIST: PlaylistEntity}
    host = EntityHost("h0", store, kinds, env, idle_timeout_s=3600)
    await host.start()
    alice = Principal("alice")

    def cmd(op, **args):
        return Command(PLAYLIST, PID, op, args, alice)

    await host.call(cmd("create", name="Hosted"))
    replies = await asyncio.gather(*(host.call(cmd("add", uris=[T(i), T(i + 100)])) for i in range(20)))
    versions = [v for _, v in replies]
    assert versions == list(range(2, 22))
    assert len({r["snapshot_id"] for r, _ in replies}) == 20
    (items, _) = await host.call(cmd("items", limit=100))
    assert items["total"] == 40
    # a Yjs client syncs, then the host restarts (snapshot on passivation) and it reconnects
    client = Doc()
    (r, _) = await host.call(cmd("yjs_sync", state_vector=client.get_state()))
    client.apply_update(r["update"])
    await host.close(passivate=True)
    host2 = EntityHost("h0", store, kinds, env, idle_timeout_s=3600)
    await host2.start()
    tracks = client.get("tracks", type=Array)
    sv = client.get_state()
    tracks.append(Map({"id": "late", "uri": T(7), "added_by": "alice", "added_at": float(T0)}))
    (r, _) = await host2.call(cmd("yjs_sync", state_vector=client.get_state()))
    client.apply_update(r["update"])
    (r, v) = await host2.call(cmd("yjs_update", update=client.get_update(sv)))
    assert r["rejected"] == [] and v == 22
    (items, _) = await host2.call(cmd("items", offset=0, limit=100))
    assert items["total"] == 41 and [x["entry_id"] for x in items["items"]] == [m["id"] for m in tracks.to_py()]
    await host2.close(passivate=False)


# ==========================================================================================
# the access policy (protocols/access.py), shared with the gateway
# ==========================================================================================
def test_access_rule():
    from protocols.access import access, role
    pol = {"owner": "alice", "public": False, "collaborative": True, "roles": {"ed": "editor", "vi": "viewer"}}
    assert [access(pol, u) for u in ("alice", "ed", "vi", "bob", None)] == ["write", "write", "read", "none", "none"]
    assert access(dict(pol, public=True), "bob") == "read"
    assert access(None, "alice") == "none" and access(dict(pol, owner=None), "alice") == "none"
    assert [role(pol, u) for u in ("alice", "ed", "vi", "bob")] == ["owner", "editor", "viewer", None]
    assert access(dict(pol, roles={"x": "admin"}), "x") == "none"         # unknown roles give nothing


def access_events(out) -> list:
    return [ev.payload for ev in out.events if ev.type == "playlist.access"]


def test_policy_in_replies_and_pushed_when_it_changes():
    h = make(1, public=False)
    pol = {"owner": "alice", "public": False, "collaborative": False, "roles": {}}
    assert h.reply("subscribe")["access"] == pol
    assert h.reply("yjs_sync")["access"] == pol
    out = h.do("set_collaborator", user_id="ed", role="editor")
    assert access_events(out) == [dict(pol, roles={"ed": "editor"})]
    assert h.reply("subscribe", "ed")["access"]["roles"] == {"ed": "editor"}
    assert access_events(h.do("set_collaborator", user_id="ed", role="viewer")) == [dict(pol, roles={"ed": "viewer"})]
    assert h.err("yjs_update", "ed", update=b"\x00\x00").code == ErrorCode.FORBIDDEN      # a viewer now
    assert access_events(h.do("set_collaborator", user_id="ed", role="viewer")) == []      # no change
    assert access_events(h.do("remove_collaborator", user_id="ed")) == [pol]
    assert h.err("subscribe", "ed").code == ErrorCode.NOT_FOUND
    assert access_events(h.do("update_details", public=True, collaborative=True)) == \
        [dict(pol, public=True, collaborative=True)]
    assert h.reply("subscribe", "ed")["access"]["public"] is True                          # readable now
    assert access_events(h.do("update_details", name="Other")) == []                       # not access
    assert access_events(h.do("add", uris=[T(3)])) == []
    # the owner's public toggle over Yjs is pushed too
    c = Client(h, "alice")
    c.sync()
    out = c.edit(lambda c: c.meta.__setitem__("public", False))
    assert access_events(out) == [dict(pol, collaborative=True)]
    # an editor's forbidden toggle is corrected in the same command: the policy did not change
    h.do("set_collaborator", user_id="ed", role="editor")
    e = Client(h, "ed")
    e.sync()
    out = e.edit(lambda c: c.meta.__setitem__("public", True))
    assert out.reply["rejected"] and access_events(out) == []


def test_create_pushes_the_first_policy():
    h = Harness()
    # the creator's connection follows the playlist from its create on (nobody else can yet)
    out = h.d.command("create", {"name": "New", "public": False}, principal=Principal("alice"),
                      origin=("gw", "creator"), follow=True)
    assert access_events(out) == [{"owner": "alice", "public": False, "collaborative": False, "roles": {}}]


@pytest.mark.parametrize("delivery", ["held_back", "merged"])
@pytest.mark.parametrize("alice_wins", [True, False])
def test_a_move_whose_copy_comes_apart_from_its_delete_is_still_a_move(delivery, alice_wins):
    """alice and ed move the same entry. ed's copy reaches the server in another command than
    its delete of the moved-away item (held back by yrs until the update it depends on arrives;
    or merged with alice's move in one update, as a client holding both would send them), and
    ed reconnects without having received anything: its SyncStep2's delete set shows the
    original deleted, but ed holds its own copy, a successor of that item. Exactly one copy
    survives, the one with the greatest item id (the client id decides: both are first writes)."""
    h = make(4)
    h.do("set_collaborator", user_id="ed", role="editor")
    a = Client(h, "alice", client_id=2000 if alice_wins else 1000)
    b = Client(h, "ed", client_id=1000 if alice_wins else 2000)
    a.sync()
    b.sync()
    h.events.clear()
    x = h.ids()[1]
    if delivery == "held_back":
        u1 = b.edit_offline(lambda c: c.tracks.append(c.entry("n1", T(9))))
        u2 = b.edit_offline(move_id(x, 4))             # after n1: yrs holds it until u1 arrives
        a.edit(move_id(x, 0))
        assert not h.do("yjs_update", "ed", origin=b.origin, update=u2).records
        h.do("yjs_update", "ed", origin=b.origin, update=u1)      # releases the copy: no delete set
    else:
        ua = a.edit_offline(move_id(x, 0))
        ub = b.edit_offline(move_id(x, 3))
        h.do("yjs_update", "ed", origin=b.origin, update=merge_updates(ua, ub))
    assert h.ids().count(x) == 1
    b.sync()                      # ed's whole delete set; it never received alice's copy
    ids = h.ids()
    assert ids.count(x) == 1, ids
    assert ids.index(x) == (0 if alice_wins else len(ids) - 1)
    assert h.e.doc.by_id[x].yid[0] == 2000
    settle(h, a, b)
    assert state_of(h.reload()) == state_of(h.e)
