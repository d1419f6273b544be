"""A data dir written by the code before the typed records (commit e3f2686) still loads.

tests/data/legacy-e3f2686.sqlite was written by tests/data/make_legacy_store.py running that commit's
EntityHost over a SQLiteStore: device group and session snapshots in the old forms (short player
names, p/d/a/la/r/f records, connection addresses as lists and strings) plus records after them.
Today's code must answer exactly what the old code answered at the end (tests/data/*.json), keep
working on top of it, and read the mix of old and new records after a restart."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import msgpack
import pytest

from actors.devicegroup import DeviceGroupEntity
from actors.devicegroup_records import GroupChange, GroupSnapshot, UserMarket
from actors.entity import SYSTEM, Command, Env, Principal
from actors.host import EntityHost
from actors.session import SessionEntity
from actors.session_records import (
    Connected,
    Disconnected,
    ItemChange,
    LibraryChanged,
    SessionSnapshot,
    SignedOut,
    record_from_wire,
)
from catalog import Catalog
from gateway import presenters
from protocols.messages import DEVICE_GROUP, SESSION
from protocols.wire import ConnAddress
from storage.sqlite import SQLiteStore

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = json.loads((DATA / "legacy-e3f2686.json").read_text())
USER = "alice"


class Run:
    def __init__(self, db: Path, now_s: float) -> None:
        self.store = SQLiteStore(db)
        self.clock = [now_s]
        self.host = EntityHost("h0", self.store, {DEVICE_GROUP: DeviceGroupEntity, SESSION: SessionEntity},
                               Env(catalog=Catalog.from_dict(FIXTURE["catalog"])), dispatch=lambda c: None,
                               clock=lambda: self.clock[0], idle_timeout_s=3600)

    async def __aenter__(self) -> "Run":
        await self.store.start()
        await self.host.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.host.close(passivate=False)
        await self.store.close()

    async def call(self, kind, op, principal=Principal(USER), origin=None, **args):
        reply = (await self.host.call(Command(kind, USER, op, args, principal, origin=origin)))[0]
        self.clock[0] += 1.5
        return reply

    def entity(self, kind):
        return self.host.slots[f"{kind}:{USER}"].entity

    async def reads(self) -> dict:
        """The reads of make_legacy_store.py, in its order, as clients see them: the old code built
        the websocket shapes in the entity; the gateway's presenters build them now."""
        cat = self.host.env.catalog
        return {
            "cluster": presenters.ws_states(cat)[DEVICE_GROUP](await self.call(DEVICE_GROUP, "subscribe")),
            "stream_counts": await self.call(DEVICE_GROUP, "stream_counts"),
            "recent": [[it["track"]["uri"], it["played_at"], (it["context"] or {}).get("uri")]
                       for it in presenters.ws_replies(cat)["recently_played"](
                           await self.call(DEVICE_GROUP, "recently_played"))["items"]],
            "connections": await self.call(SESSION, "list_connections"),
            "library": {k: await self.call(SESSION, "library_list", type=k) for k in ("track", "album", "artist")},
            "resume": await self.call(SESSION, "resume", since=0),
            "revoked": await self.call(SESSION, "check_device", device_id="d5"),
        }


def _stored(db: Path):
    import sqlite3
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT key, data FROM records ORDER BY key, seq").fetchall()
        snaps = con.execute("SELECT key, data FROM snapshots").fetchall()
    finally:
        con.close()
    unpack = lambda b: msgpack.unpackb(b, raw=False, strict_map_key=False)  # noqa: E731
    return [(k, unpack(d)) for k, d in rows], {k: unpack(d) for k, d in snaps}


def test_the_fixture_holds_the_old_forms():
    records, snaps = _stored(DATA / "legacy-e3f2686.sqlite")
    group = [r for k, entry in records if k == f"{DEVICE_GROUP}:{USER}" for r in entry["recs"]]
    assert group and all("v" not in r for r in group)
    assert {"p", "a", "la", "r", "f"} <= set().union(*group) and any("ev" in r for r in group)
    assert snaps[f"{DEVICE_GROUP}:{USER}"]["state"]["v"] == 1 and "pos" in snaps[f"{DEVICE_GROUP}:{USER}"]["state"]["p"]
    session = [r[0] for k, entry in records if k == f"{SESSION}:{USER}" for r in entry["recs"]]
    assert {"conn", "disc", "end", "lib"} <= set(session)
    assert snaps[f"{SESSION}:{USER}"]["state"]["f"] == 1 and "conns" in snaps[f"{SESSION}:{USER}"]["state"]


@pytest.fixture
def db(tmp_path):
    """A copy of the old data dir (the test writes to it)."""
    path = tmp_path / "store.sqlite"
    shutil.copy(DATA / "legacy-e3f2686.sqlite", path)
    return path


async def test_a_data_dir_of_the_old_code_loads_with_the_same_state(db):
    expected = FIXTURE["expected"]
    async with Run(db, expected["read_at_s"]) as run:
        got = await run.reads()
        # fields added since (docs/rights.md, issue #15): what an old data dir reads for them
        player = got["cluster"]["player"]
        assert player.pop("market") is None
        assert player.pop("explicit_filter") is False
        assert player.pop("autoplay") == {"enabled": False, "active": False, "from": None}
        if player["track"] is not None:
            assert player["track"].pop("is_playable") is True
        assert got == {k: v for k, v in expected.items() if k != "read_at_s"}
        group = run.entity(DEVICE_GROUP)
        assert group.devices["d1"]["conn"] == ConnAddress("gw1", "c1")
        assert isinstance(group.devices["d1"]["conn"], ConnAddress)
        assert group.p["order_pos"] == 0 and group.p["in_order"] and group.p["position_ms"] == 20_000
        assert set(run.entity(SESSION).conns) == {ConnAddress("gw1", "s0"), ConnAddress("gw1", "s2"),
                                                  ConnAddress("gw3", "s9")}
        # keep going on top of it: the new records are version 2, the old ones stay as they are
        await run.call(DEVICE_GROUP, "pause")
        await run.call(DEVICE_GROUP, "register", origin=ConnAddress("gw2", "c7"), device_id="d7")
        await run.call(DEVICE_GROUP, "disconnect", principal=SYSTEM, conn="gw1/c0")
        await run.call(SESSION, "disconnect", principal=SYSTEM, conn="gw1/s0")
        await run.call(SESSION, "connect", principal=SYSTEM, conn="gw4/s4", device_id="d4", client="app")
        await run.call(SESSION, "library_save", uris=[FIXTURE["expected"]["library"]["track"]["items"][0]["uri"],
                                                       list(run.host.env.catalog.tracks)[-1].uri])
        await run.call(SESSION, "end_connection", device_id="d4")
        after = {"group": group.snapshot(), "session": run.entity(SESSION).snapshot()}
        end = run.clock[0]
    records, _ = await asyncio.to_thread(_stored, db)
    group_recs = [r for k, entry in records if k == f"{DEVICE_GROUP}:{USER}" for r in entry["recs"]]
    assert [r.get("v") for r in group_recs][-3:] == [2, 2, 2] and any("v" not in r for r in group_recs)
    session_recs = [r for k, entry in records if k == f"{SESSION}:{USER}" for r in entry["recs"]]
    assert [(r["v"], r["type"]) for r in session_recs[-4:]] == \
        [(2, "disconnected"), (2, "connected"), (2, "library"), (2, "signed_out")]
    assert any(isinstance(r, list) for r in session_recs)          # the old records stay as they were
    async with Run(db, end) as run:      # old snapshot, old records, new records
        await run.call(DEVICE_GROUP, "state")
        await run.call(SESSION, "list_connections")
        assert run.entity(DEVICE_GROUP).snapshot() == after["group"]
        assert run.entity(SESSION).snapshot() == after["session"]
        assert run.entity(DEVICE_GROUP).devices["d7"]["conn"] == ConnAddress("gw2", "c7")
        assert ConnAddress("gw4", "s4") not in run.entity(SESSION).conns and "d4" in run.entity(SESSION).revoked
        assert not run.entity(DEVICE_GROUP).devices["d0"]["online"]


def test_old_and_new_records_mean_the_same_change():
    old = {"p": {"pos": 3, "on": True, "position": 1_000, "ts": 5, "pid": 2, "dur": 9, "ctx": "spotify:album:x"},
           "d": {"d0": {"id": "d0", "conn": "gw/c1"}, "d1": None}, "a": None, "la": "d0", "r": 4, "f": 4,
           "ev": "e1", "pk": 2, "st": "spotify:track:t", "rp": [5, "spotify:track:t", None]}
    change = GroupChange.from_wire(old)
    assert change.player == {"order_pos": 3, "in_order": True, "position_ms": 1_000, "timestamp_ms": 5,
                             "playback_id": 2, "duration_ms": 9, "context_uri": "spotify:album:x"}
    assert change.devices == {"d0": {"id": "d0", "conn": ConnAddress("gw", "c1")}, "d1": None}
    assert change.active is None and change.last_active == "d0" and change.revision == change.fence == 4
    assert change.play.recent() == [5, "spotify:track:t", None] and change.play.play_key == 2
    wire = msgpack.unpackb(msgpack.packb(change.to_wire()), raw=False)
    assert wire["v"] == 2 and wire["devices"]["d0"]["conn"] == ["gw", "c1"] and wire["active"] is None
    assert GroupChange.from_wire(wire) == change
    assert "active" not in GroupChange(revision=1).to_wire()         # unchanged is absent, None is a value
    snap = DeviceGroupEntity(USER, Env()).snapshot()
    assert GroupSnapshot.from_wire(msgpack.unpackb(msgpack.packb(snap), raw=False)).to_wire() == snap


def test_old_and_new_session_records_mean_the_same_change():
    cases = [
        (["conn", 3, "gw/c1", "d1", "app", "gw", 5], Connected(3, ConnAddress("gw", "c1"), "d1", "app", "gw", 5)),
        (["disc", 4, ["gw/c1", "conn:gw2/c2"], "timeout"],
         Disconnected(4, [ConnAddress("gw", "c1"), ConnAddress("gw2", "c2")], "timeout")),
        (["end", 5, "d1", 9], SignedOut(5, "d1", 9)),
        (["lib", 6, [["s", 0, "t" * 22, 7], ["r", 1, "a" * 22, None]]],
         LibraryChanged(6, [ItemChange("s", 0, "t" * 22, 7), ItemChange("r", 1, "a" * 22, None)])),
    ]
    for old, typed in cases:
        assert record_from_wire(old) == typed
        wire = msgpack.unpackb(msgpack.packb(typed.to_wire()), raw=False)
        assert wire["v"] == 2 and wire["version"] == typed.version
        assert record_from_wire(wire) == typed
    assert Connected(1, ConnAddress("gw", "c"), None, "yjs", "gw", 2).to_wire()["conn"] == ["gw", "c"]
    with pytest.raises(ValueError):
        record_from_wire({"v": 3, "type": "connected"})


def test_old_session_snapshot_reads_as_the_new_one():
    records, snaps = _stored(DATA / "legacy-e3f2686.sqlite")
    old = snaps[f"{SESSION}:{USER}"]["state"]
    snap = SessionSnapshot.from_wire(old)
    assert snap.version == old["v"] and snap.changes_floor == old["floor"]
    assert {str(c): [p.device_id, p.client, p.gateway, p.since_ms, p.seen_ms] for c, p in snap.connections.items()} \
        == {c[0]: c[1:] for c in old["conns"]}
    assert [[v, [list(ch) for ch in chs]] for v, chs in snap.changes] == old["log"]
    wire = msgpack.unpackb(msgpack.packb(snap.to_wire()), raw=False)
    assert wire["format"] == 2 and SessionSnapshot.from_wire(wire) == snap
    e = SessionEntity(USER, Env())                     # and the entity restores both forms alike
    e.restore(old)
    e2 = SessionEntity(USER, Env())
    e2.restore(wire)
    assert e.snapshot() == e2.snapshot() == snap.to_wire()


# == the market: before the device group held its own, the gateway stamped it on each playback command ====
def test_a_record_with_the_gateways_market_stamp_reads_as_a_market_not_from_the_account():
    """Until the account told the group its market (actors/devicegroup_market.py), the gateway set
    `args.market` on each playback command and the group stored it as the player field `market`."""
    old = {"v": 2, "player": {"market": "SE", "playing": True}, "revision": 3}
    change = GroupChange.from_wire(old)
    # the stamp had no filter: None, "as it was" when applied (UserMarket.over)
    assert change.player == {"playing": True} and change.market == UserMarket("SE", None, None)
    wire = msgpack.unpackb(msgpack.packb(change.to_wire()), raw=False)
    assert "market" not in wire["player"]
    assert wire["market"] == {"country": "SE", "as_of": None, "explicit_filter": None}
    assert GroupChange.from_wire(wire) == change
    # today's record: the market typed beside the player, never a player field
    now = GroupChange(player={"playing": False}, market=UserMarket("NO", 7))
    assert now.to_wire() == {"v": 2, "player": {"playing": False}, "market": {"country": "NO", "as_of": 7}}
    assert GroupChange.from_wire(now.to_wire()) == now
    assert GroupChange.from_wire({"v": 2, "player": {"playing": True}}).market is None     # unchanged
    on = GroupChange(market=UserMarket("NO", 8, True))
    assert on.to_wire()["market"] == {"country": "NO", "as_of": 8, "explicit_filter": True}
    assert GroupChange.from_wire(on.to_wire()) == on


def test_records_with_the_gateways_explicit_filter_stamp_replay_each_stamp_over_the_last():
    """For a while the gateway stamped the explicit content filter with the market (player fields
    `market` and `explicit_filter`, each record only the one that changed): replayed, a stamp that
    lacks one of them leaves it as it was, and neither is a player field any more."""
    e = DeviceGroupEntity(USER, Env())
    for rec in ({"v": 2, "player": {"market": "SE", "explicit_filter": True, "playing": True}},
                {"v": 2, "player": {"market": "NO"}},
                {"v": 2, "player": {"playing": False}}):
        e.apply(rec)
    assert e.market == UserMarket("NO", None, True)
    assert e.p["market"] == "NO" and e.p["explicit_filter"] is True and e.p["playing"] is False
    e.apply({"v": 2, "player": {"explicit_filter": False}})
    assert e.market == UserMarket("NO", None, False)
    snap = e.snapshot()
    assert "market" not in snap["player"] and "explicit_filter" not in snap["player"]
    assert snap["market"] == {"country": "NO", "as_of": None}
    # an old snapshot with both stamps in its player
    old = {**snap, "player": {**snap["player"], "market": "DE", "explicit_filter": True}}
    del old["market"]
    e2 = DeviceGroupEntity(USER, Env())
    e2.restore(old)
    assert e2.market == UserMarket("DE", None, True) and e2.p["explicit_filter"] is True


def test_an_old_snapshot_with_the_stamp_loads_and_the_next_playback_command_asks_the_account():
    from actors.entity import Principal as P
    from storage.base import Snapshot
    from actors.slot import pack
    from tests.support.catalog import catalog_with
    from tests.support.entities import EntityDriver

    tracks = [f"{i:022d}" for i in range(3)]
    d = EntityDriver(DeviceGroupEntity, USER, Env(catalog=catalog_with(tracks)), now_ms=1_700_000_000_000)
    d.command("register", {"device_id": "d0", "name": "Laptop"}, principal=P(USER), origin=("gw1", "c0"))
    state, seq = msgpack.unpackb(msgpack.packb(d.e.snapshot()), raw=False), d.e.version
    # the snapshot as the code before wrote it: no market field, the stamp in the player
    old = {k: v for k, v in state.items() if k != "market"}
    old["player"] = {**state["player"], "market": "SE"}
    slot = d.host.slots[d.key]
    d._run(d.store.write_snapshot(d.key, slot.epoch, Snapshot(seq, pack({"state": old, "ops": [], "outbox": []}))))
    d.restart()
    d.command("devices", {}, principal=P(USER))                  # activates it from the old snapshot
    assert d.e.market == UserMarket("SE", None) and d.e.p["market"] == "SE"
    assert d.asked == []
    d.serve("account", USER, "market", {"country": "NO", "as_of": 4})
    d.command("play", {"device_id": "d0", "uris": [f"spotify:track:{t}" for t in tracks]}, principal=P(USER))
    assert [(c.kind, c.op) for c in d.asked] == [("account", "market")]
    assert d.e.market == UserMarket("NO", 4) and d.e.p["market"] == "NO"
    d.command("next", {}, principal=P(USER))                     # known now: no second read
    assert len(d.asked) == 1
    snap, _ = d.snapshot()
    assert snap["market"] == {"country": "NO", "as_of": 4} and "market" not in snap["player"]
