"""The playlist entity's test harness and Yjs client, shared by tests/test_playlist_entity.py and
tests/test_playlist_properties.py: a Harness on the real EntityHost (tests/support/entities.py),
pycrdt clients on their own connections, and the mirror/document checks."""
from __future__ import annotations

import itertools

import msgpack
import pytest
from pycrdt import Array, Doc, Map, get_state

from actors.entity import SYSTEM, Command, Env, Principal
from actors.playlist import PlaylistEntity
from actors.playlist_doc import PlaylistDoc, decode_state_vector
from protocols.errors import SyncopateError
from protocols.messages import PLAYLIST
from tests.support.catalog import catalog_with
from tests.support.entities import EntityDriver, OnDriver


PID = "37i9dQZF1DXcBWIGoYBM5M"
T0 = 1_700_000_000_000


def T(i: int) -> str:
    return f"spotify:track:{i:022d}"


UNKNOWN = "spotify:track:" + "Z" * 22


# tracks T(0) .. T(CATALOG_TRACKS - 1) exist; UNKNOWN is well-formed and does not
CATALOG_TRACKS = 10_200
CATALOG = catalog_with(f"{i:022d}" for i in range(CATALOG_TRACKS))


def roundtrip(value):
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)


class _Playlist:
    """What both harnesses offer over their `do`."""

    def reply(self, op: str, who: str | None = "alice", **args):
        return self.do(op, who, **args).reply

    def err(self, op: str, who: str | None = "alice", **args) -> SyncopateError:
        with pytest.raises(SyncopateError) as ei:
            self.do(op, who, **args)
        return ei.value

    def uris(self) -> list[str]:
        return [e.uri for e in self.e.doc.entries]

    def ids(self) -> list[str]:
        return [e.id for e in self.e.doc.entries]


class Harness(_Playlist, OnDriver):
    """One playlist on the real EntityHost over the memory store (tests/support/entities.py): the
    host runs every command (versions, the output gate, phantoms, log entries); `compact` writes a
    snapshot as the host's compaction does, `restart` kills the host and activates the playlist
    again from the store, `reload` rebuilds a fresh entity from the snapshot and the committed
    records. `log` is the records committed since the last compaction, `events` every push."""

    def __init__(self, pid: str = PID, config: dict | None = None):
        self.pid = pid
        self.env = Env(catalog=CATALOG, config=config or {})
        self.d = EntityDriver(PlaylistEntity, pid, self.env, now_ms=T0)
        self.snap = None
        self.snap_version = 0

    @property
    def events(self) -> list:
        return self.d.pushes

    @property
    def log(self) -> list[list]:
        return [recs for v, recs in self.d.entries() if v > self.snap_version]

    def do(self, op: str, who: str | None = "alice", origin: tuple[str, str] | None = None, **args):
        p = SYSTEM if who is None else Principal(who)
        self.d.now += 1
        return self.d.command(op, args, principal=p, origin=origin)

    def compact(self) -> None:
        self.snap, self.snap_version = self.d.snapshot()

    def reload(self) -> PlaylistEntity:
        return self.d.replayed(self.snap, self.snap_version)

    def restart(self) -> None:
        self.d.restart()


class StoredFormsHarness(_Playlist):
    """For the tests that write older stored forms on purpose (a snapshot or log entries as an
    older version stored them: `snap` and `log` are edited, then `restart`): drives the entity by
    hand the way actors/host.py does (version bump per record-bearing outcome, msgpack'd log
    entries, snapshots, reload). Every other test runs on the real host (`Harness`)."""

    def __init__(self, pid: str = PID, config: dict | None = None):
        self.pid = pid
        self.env = Env(catalog=CATALOG, config=config or {})
        self.e = PlaylistEntity(pid, self.env)
        self.log: list[list] = []
        self.snap = None
        self.snap_version = 0
        self.now = T0
        self.events: list = []

    def do(self, op: str, who: str | None = "alice", origin: tuple[str, str] | None = None, **args):
        p = SYSTEM if who is None else Principal(who)
        self.now += 1
        out = self.e.handle(Command(PLAYLIST, self.pid, op, args, p, now_ms=self.now, origin=origin))
        if out.records:
            self.e.version += 1
            self.log.append(roundtrip(out.records))
        self.events.extend(out.events)
        return out

    def compact(self) -> None:
        self.snap = roundtrip(self.e.snapshot())
        self.snap_version = self.e.version
        self.log = []

    def reload(self) -> PlaylistEntity:
        e2 = PlaylistEntity(self.pid, self.env)
        if self.snap is not None:
            e2.restore(self.snap)
            e2.version = self.snap_version
        for recs in self.log:
            for r in recs:
                e2.apply(r)
            e2.version += 1
        return e2

    def restart(self) -> None:
        self.e = self.reload()


def state_of(e: PlaylistEntity) -> dict:
    return {"entries": [x.row() for x in e.doc.entries], "meta": dict(e.doc.meta), "owner": e.owner,
            "collaborators": dict(e.collaborators), "followers": sorted(e.followers),
            "listeners": sorted(e.listeners), "doc": doc_json(e.doc)}


def doc_json(d: PlaylistDoc) -> dict:
    c = Doc()
    c.apply_update(d.full_update())
    return {"meta": c.get("meta", type=Map).to_py(), "tracks": c.get("tracks", type=Array).to_py()}


def check_mirror(e: PlaylistEntity) -> None:
    """The Python mirror equals the document, entries are valid and unique."""
    j = doc_json(e.doc)
    rows = [[m["id"], m["uri"], m["added_by"], int(m["added_at"])] for m in j["tracks"]]
    assert rows == [x.row() for x in e.doc.entries]
    assert len({r[0] for r in rows}) == len(rows)
    assert set(e.doc.by_id) == {r[0] for r in rows} and not e.doc.dups
    for m in j["tracks"]:
        assert set(m) == {"id", "uri", "added_by", "added_at"}
    assert {k: j["meta"][k] for k in j["meta"]} == e.doc.meta
    # the Yjs item ids the mirror knows are the document's (sampled: each check walks the list)
    n = len(e.doc.entries)
    for p in range(0, n, 1 if n <= 200 else 997):
        x = e.doc.entries[p]
        if x.yid is not None:
            assert x.yid == e.doc.item_id(p), (p, x)


def apply_delta(order: list[str], delta: list[dict]) -> list[str]:
    order = list(order)
    for op in delta:
        if op["op"] == "delete":
            i, ids = op["index"], op["entry_ids"]
            assert order[i:i + len(ids)] == ids
            del order[i:i + len(ids)]
        elif op["op"] == "insert":
            order[op["index"]:op["index"]] = [x["entry_id"] for x in op["items"]]
    return order


_connections = itertools.count(1)


class Client:
    """A Yjs client: its own pycrdt document, syncing through yjs_sync / yjs_update like a
    y-websocket client on one connection (`origin`)."""

    def __init__(self, h: Harness, user: str, client_id: int | None = None):
        self.h, self.user = h, user
        self.origin = ("gw", f"conn-{next(_connections)}")
        self.doc = Doc(client_id=client_id) if client_id else Doc()
        self.tracks = self.doc.get("tracks", type=Array)
        self.meta = self.doc.get("meta", type=Map)
        self._out: list[bytes] = []
        self._capture = False
        self.doc.observe(lambda ev: self._out.append(ev.update) if self._capture else None)

    def sync(self):
        """The y-websocket handshake on a (re)connected socket: SyncStep1 (our state vector); the
        server's SyncStep1 arrives first, and our SyncStep2 (what it lacks, with our whole delete
        set) is computed before the server's SyncStep2 (what we lack) is integrated."""
        self.origin = ("gw", f"conn-{next(_connections)}")            # a new connection
        r = self.h.reply("yjs_sync", self.user, origin=self.origin, state_vector=self.doc.get_state())
        missing = self.doc.get_update(r["state_vector"])
        out = None
        if decode_state_vector(get_state(missing)) or len(missing) > 2:     # structs or deletions
            out = self.send(missing)
        self.doc.apply_update(r["update"])
        return out

    def edit(self, fn):
        """Run fn inside one transaction and send the resulting update; returns the outcome."""
        self._capture = True
        try:
            with self.doc.transaction():
                fn(self)
        finally:
            self._capture = False
        updates, self._out = self._out, []
        if not updates:
            return None
        return self.send(updates[0])

    def edit_offline(self, fn) -> bytes:
        self._capture = True
        try:
            with self.doc.transaction():
                fn(self)
        finally:
            self._capture = False
        updates, self._out = self._out, []
        return updates[0]

    def send(self, update: bytes):
        out = self.h.do("yjs_update", self.user, origin=self.origin, update=update)
        if out.reply["update"]:
            self.doc.apply_update(out.reply["update"])
        return out

    def receive(self, events) -> None:
        for ev in events:
            if ev.payload.get("update"):
                self.doc.apply_update(ev.payload["update"])

    def entry(self, eid: str, uri: str, by: str | None = None, at: float | None = None) -> Map:
        return Map({"id": eid, "uri": uri, "added_by": by or self.user, "added_at": float(at or T0)})

    def ids(self) -> list[str]:
        return [m["id"] for m in self.tracks.to_py()]

    def json(self) -> dict:
        return {"meta": self.meta.to_py(), "tracks": self.tracks.to_py()}

    def move(self, src: int, dst: int) -> None:
        """Yjs has no move: delete and insert a copy with the same id (dst counted after removal)."""
        m = self.tracks[src].to_py()
        del self.tracks[src]
        self.tracks.insert(dst, Map(m))
