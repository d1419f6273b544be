"""The entities' parts in user data rights, one entity at a time: the playlist's forget_user (and
retiring an owned playlist), the session's collaboration index, export and account_deleted, the
erasure registry, the directory's remove. Replay of the records rebuilds what handle produced."""
from __future__ import annotations

import msgpack
import pytest
from pycrdt import Array, Doc

from actors.account import DirectoryEntity
from actors.entity import SYSTEM, Command, Env, Principal
from actors.erasure import REGISTRY, TOMBSTONE_TTL_MS, ErasureRegistry
from actors.session import SessionEntity
from protocols.errors import ErrorCode, SyncopateError
from tests.support.playlist_entity import CATALOG, T, Harness, state_of

ZED, ANON = "zed-forget-me", "@deleted-user"


def roundtrip(v):
    return msgpack.unpackb(msgpack.packb(v, use_bin_type=True), raw=False, strict_map_key=False)


def shared(h: Harness) -> None:
    """alice's playlist: zed an editor and follower, entries by both, one deleted by zed."""
    h.do("create", name="Shared", public=False)
    h.do("set_collaborator", user_id=ZED, role="editor")
    h.do("add", uris=[T(0)])
    h.do("add", ZED, uris=[T(1), T(2), T(3)])
    h.do("remove", ZED, tracks=[{"uri": T(3)}])
    h.do("follow", ZED)
    h.do("add_listener", None, user_id=ZED)


def test_forget_user_rewrites_entries_and_drops_roles_with_valid_crdt_updates():
    h = Harness()
    shared(h)
    ids = h.ids()
    # a Yjs replica that has everything so far
    replica = Doc()
    replica.apply_update(h.e.doc.full_update())
    out = h.do("forget_user", None, user_id=ZED, anonymous_id=ANON)
    assert out.reply["owned"] is False and out.reply["rewritten"] == 2
    assert [e.added_by for e in h.e.doc.entries] == ["alice", ANON, ANON]
    assert h.ids() == ids                                         # the same entries, in order
    assert ZED not in h.e.collaborators and ZED not in h.e.followers and ZED not in h.e.listeners
    # the event's update is an ordinary Yjs update: the replica converges by applying it
    update = out.events[0].payload["update"]
    replica.apply_update(update)
    tracks = replica.get("tracks", type=Array).to_py()
    assert [t["added_by"] for t in tracks] == ["alice", ANON, ANON]
    # nothing of zed in the snapshot: the document's old values are garbage collected
    snap = msgpack.packb(h.e.snapshot(), use_bin_type=True)
    assert ZED.encode() not in snap
    # replay of the log rebuilds the same state
    assert state_of(h.reload()) == state_of(h.e)
    # the policy push tells live connections zed has no role any more
    assert any(ev.type == "playlist.access" and ZED not in ev.payload["roles"] for ev in out.events)


def test_forget_user_twice_changes_nothing_and_others_are_untouched():
    h = Harness()
    shared(h)
    h.do("forget_user", None, user_id=ZED, anonymous_id=ANON)
    v = h.e.version
    again = h.do("forget_user", None, user_id=ZED, anonymous_id=ANON)
    assert again.records == [] and again.reply["rewritten"] == 0 and h.e.version == v
    other = h.do("forget_user", None, user_id="nobody", anonymous_id=ANON)
    assert other.records == []


def test_forget_user_refuses_bad_input_and_non_system_senders():
    h = Harness()
    shared(h)
    before = state_of(h.e)
    assert h.err("forget_user", "alice", user_id=ZED, anonymous_id=ANON).code is ErrorCode.FORBIDDEN
    assert h.err("forget_user", None, user_id=ZED, anonymous_id=ZED).code is ErrorCode.INVALID_FIELD
    assert h.err("forget_user", None, user_id=ZED).code is ErrorCode.INVALID_FIELD
    assert state_of(h.e) == before


def test_forgetting_the_owner_retires_the_playlist():
    h = Harness()
    h.do("create", ZED, name="Mine")
    h.do("add", ZED, uris=[T(0)])
    h.do("follow", "bob")
    h.do("set_collaborator", ZED, user_id="carol", role="viewer")
    out = h.do("forget_user", None, user_id=ZED, anonymous_id=ANON)
    assert out.reply == {"owned": True, "followers": ["bob"], "collaborators": ["carol"]}
    assert any(ev.type == "playlist.access" and ev.payload["owner"] is None for ev in out.events)
    for who in ("bob", "carol", ZED):
        assert h.err("get", who).code is ErrorCode.NOT_FOUND
    # idempotent, also after a restart from the log or a snapshot
    h.restart()
    assert h.do("forget_user", None, user_id=ZED, anonymous_id=ANON).reply == out.reply
    h.compact()
    h.restart()
    assert h.do("forget_user", None, user_id=ZED, anonymous_id=ANON).reply == out.reply


def test_set_and_remove_collaborator_index_the_playlist_in_the_users_session():
    h = Harness()
    h.do("create", name="x")
    eff = h.do("set_collaborator", user_id="bob", role="editor").effects
    assert [(c.kind, c.entity_id, c.op, c.args) for c in eff] == [
        ("session", "bob", "playlist_role", {"playlist_id": h.pid, "role": "editor"})]
    eff = h.do("remove_collaborator", user_id="bob").effects
    assert [c.args for c in eff] == [{"playlist_id": h.pid, "role": None}]


def _session(uid="bob"):
    return SessionEntity(uid, Env(catalog=CATALOG, config={}))


def _run(e, op, args=None, p=SYSTEM, now=1000):
    out = e.handle(Command("session", e.id, op, args or {}, p, now_ms=now))
    if out.records:
        e.version += 1
    return out


def test_session_collaboration_index_survives_snapshot_and_keeps_removed_roles():
    s = _session()
    assert _run(s, "playlist_role", {"playlist_id": "p1", "role": "editor"}).records
    assert _run(s, "playlist_role", {"playlist_id": "p1", "role": "editor"}).records == []
    _run(s, "playlist_role", {"playlist_id": "p1", "role": None})
    _run(s, "playlist_role", {"playlist_id": "p2", "role": "viewer"})
    assert s.collab == {"p1": None, "p2": "viewer"}        # a removed role stays indexed
    s2 = _session()
    s2.restore(roundtrip(s.snapshot()))
    assert s2.collab == s.collab
    exp = _run(s2, "export", p=Principal("bob")).reply
    assert exp["collaborating"] == [{"playlist_id": "p1", "role": None}, {"playlist_id": "p2", "role": "viewer"}]
    with pytest.raises(SyncopateError) as err:
        _run(s, "playlist_role", {"playlist_id": "p3", "role": "owner"})
    assert err.value.code is ErrorCode.INVALID_FIELD
    with pytest.raises(SyncopateError):
        _run(s, "playlist_role", {"playlist_id": "p3", "role": "editor"}, p=Principal("bob"))
    with pytest.raises(SyncopateError) as err:
        _run(s, "export", p=Principal("mallory"))
    assert err.value.code is ErrorCode.FORBIDDEN


def test_account_deleted_closes_every_connection_and_stores_nothing():
    s = _session()
    _run(s, "connect", {"conn": "g1/c1", "device_id": "phone"})
    _run(s, "connect", {"conn": "g2/c9", "device_id": None, "client": "yjs"})
    _run(s, "playlist_role", {"playlist_id": "p2", "role": "viewer"})
    out = _run(s, "account_deleted")
    assert out.records == []
    assert out.reply == {"playlists": [], "collaborating": ["p2"]}
    closing = sorted(ev.to for ev in out.events if ev.close)
    assert closing == ["conn:g1/c1", "conn:g2/c9"]
    assert any(ev.to == "bob" and ev.payload == {"reason": "account_deleted"} for ev in out.events)
    with pytest.raises(SyncopateError):
        _run(s, "account_deleted", p=Principal("bob"))


def _reg():
    return ErasureRegistry(REGISTRY, Env())


def _reg_do(r, op, now=1000, **args):
    out = r.handle(Command("erasure", REGISTRY, op, args, SYSTEM, now_ms=now))
    if out.records:
        r.version += 1
    return out


def test_registry_drives_one_deletion_and_keeps_only_a_pseudonym():
    r = _reg()
    b = _reg_do(r, "begin", user_id=ZED, deletion_id="d" * 20)
    assert b.reply == {"deletion_id": "d" * 20, "started_ms": 1000, "plan": None, "resumed": False}
    again = _reg_do(r, "begin", user_id=ZED, deletion_id="e" * 20)
    assert again.records == [] and again.reply["deletion_id"] == "d" * 20 and again.reply["resumed"]
    assert _reg_do(r, "plan", user_id=ZED, playlists=["p1", "p2", "p1"]).reply == {"plan": ["p1", "p2"]}
    assert _reg_do(r, "plan", user_id=ZED, playlists=["p9"]).reply == {"plan": ["p1", "p2"]}   # once
    assert _reg_do(r, "status").reply["pending"] == [ZED]
    assert _reg_do(r, "status").reply["started_ms"] == {ZED: 1000}
    done = _reg_do(r, "done", now=2000, user_id=ZED, pseudonym="a" * 64)
    assert done.reply == {"deletion_id": "d" * 20, "finished_ms": 2000}
    st = _reg_do(r, "status").reply
    assert st["pending"] == [] and st["tombstones"] == {"a" * 64: 2000}
    assert _reg_do(r, "status", after=st["version"]).reply["tombstones"] == {}   # incremental
    assert ZED.encode() not in msgpack.packb(r.snapshot(), use_bin_type=True)
    with pytest.raises(SyncopateError) as err:
        _reg_do(r, "done", user_id=ZED, pseudonym="a" * 64)
    assert err.value.code is ErrorCode.NOT_FOUND
    # tombstones lapse after the longest token lifetime
    _reg_do(r, "begin", now=3000, user_id="other", deletion_id="f" * 20)
    _reg_do(r, "done", now=2000 + TOMBSTONE_TTL_MS + 1, user_id="other", pseudonym="b" * 64)
    assert set(r.tombstones) == {"b" * 64}
    # replay rebuilds it
    r2 = _reg()
    r2.restore(roundtrip(r.snapshot()))
    assert r2.tombstones == r.tombstones and r2.audit == r.audit and r2.pending == r.pending


def test_registry_refuses_users_and_bad_input():
    r = _reg()
    with pytest.raises(SyncopateError) as err:
        r.handle(Command("erasure", REGISTRY, "begin", {"user_id": ZED, "deletion_id": "d" * 20}, Principal(ZED)))
    assert err.value.code is ErrorCode.FORBIDDEN
    for args in ({"user_id": ZED, "deletion_id": "short"}, {"deletion_id": "d" * 20}):
        with pytest.raises(SyncopateError) as err:
            _reg_do(r, "begin", **args)
        assert err.value.code is ErrorCode.INVALID_FIELD
    _reg_do(r, "begin", user_id=ZED, deletion_id="d" * 20)
    with pytest.raises(SyncopateError):
        _reg_do(r, "done", user_id=ZED, pseudonym="not hex")
    assert r.pending[ZED]["deletion_id"] == "d" * 20 and not r.tombstones


def test_directory_remove_forgets_the_id():
    d = DirectoryEntity("users", Env())
    for i in ("a", ZED, "b"):
        d.handle(Command("directory", "users", "add", {"id": i}, SYSTEM))
    out = d.handle(Command("directory", "users", "remove", {"id": ZED}, SYSTEM))
    assert out.records == [["del", ZED]] and list(d.ids) == ["a", "b"]
    assert d.handle(Command("directory", "users", "remove", {"id": ZED}, SYSTEM)).records == []
    d2 = DirectoryEntity("users", Env())
    for rec in (["add", "a"], ["add", ZED], ["add", "b"], ["del", ZED]):
        d2.apply(rec)
    assert d2.ids == d.ids

