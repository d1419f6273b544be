"""Writes tests/data/legacy-e3f2686.sqlite (+ .json): a data dir as the code before the typed records
(commit e3f2686) stored it, for tests/test_legacy_records.py. Run it with that commit's code:

    cd <checkout of e3f2686> && python <this repo>/tests/data/make_legacy_store.py <this repo>/tests/data

It drives the real EntityHost over a SQLiteStore (small snapshot_every, so the file holds snapshots
AND records after them), then saves what the entities answered at the end: the test loads the file
with today's code and must see the same state."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())          # the checkout being recorded, not this repo

from actors.devicegroup import DeviceGroupEntity  # noqa: E402
from actors.entity import SYSTEM, Command, Env, Principal  # noqa: E402
from actors.host import EntityHost  # noqa: E402
from actors.session import SessionEntity  # noqa: E402
from catalog import Catalog  # noqa: E402
from protocols.messages import DEVICE_GROUP, SESSION  # noqa: E402
from storage.sqlite import SQLiteStore  # noqa: E402

USER = "alice"
T0 = 1_700_000_000.0


class Group(DeviceGroupEntity):
    snapshot_every = 8          # a snapshot after `repeat`; transfer, seek, ... stay records


class Session(SessionEntity):
    snapshot_every = 5          # a snapshot after the save; remove, disconnect, sign-out, connect records


async def main(out: Path) -> None:
    cat = Catalog.generated(seed=3, tracks=60)
    album = next(a for a in cat.albums if len(a.track_ids) >= 4)
    tracks = [t.uri for t in cat.tracks]
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "store.sqlite"
    store = SQLiteStore(db)
    await store.start()
    clock = [T0]
    host = EntityHost("h0", store, {DEVICE_GROUP: Group, SESSION: Session}, Env(catalog=cat),
                      dispatch=lambda c: None, clock=lambda: clock[0], idle_timeout_s=3600)
    await host.start()
    me = Principal(USER)

    async def call(kind, op, origin=None, principal=me, **args):
        reply = (await host.call(Command(kind, USER, op, args, principal, origin=origin)))[0]
        clock[0] += 1.5
        return reply

    # -- the device group: devices, playback, a transfer, listening, a disconnect -----------------
    for i in range(3):
        await call(DEVICE_GROUP, "register", origin=("gw1", f"c{i}"), device_id=f"d{i}", name=f"D{i}",
                   type="computer" if i else "smartphone", volume_percent=50 + i)
    await call(DEVICE_GROUP, "play", device_id="d0", context_uri=album.uri, offset={"position": 1}, seed=7)
    for _ in range(4):                       # 40 s of play, the devices heartbeating
        clock[0] += 10
        for i in range(3):
            await call(DEVICE_GROUP, "heartbeat", origin=("gw1", f"c{i}"), device_id=f"d{i}")
    await call(DEVICE_GROUP, "progress", event_id="e1", device_id="d0", uri=cat.track(album.track_ids[1]).uri,
               ms_played=35_000, playback_id=1)
    await call(DEVICE_GROUP, "queue_add", uri=tracks[-1])
    await call(DEVICE_GROUP, "shuffle", state=True, seed=11)
    await call(DEVICE_GROUP, "repeat", state="context")
    await call(DEVICE_GROUP, "transfer", device_ids=["d1"], play=True)
    await call(DEVICE_GROUP, "seek", position_ms=20_000)
    await call(DEVICE_GROUP, "progress", event_id="e2", device_id="d1", uri=tracks[-2], ms_played=31_000)
    await call(DEVICE_GROUP, "volume", volume_percent=33)
    await call(DEVICE_GROUP, "disconnect", principal=SYSTEM, conn="gw1/c2")
    await call(DEVICE_GROUP, "update_device", device_id="d0", name="Phone")
    # -- the session: presence, a sign-out, the library ---------------------------------------------
    for i, dev in enumerate(("d0", "d1", "d1", "d5")):
        await call(SESSION, "connect", principal=SYSTEM, conn=f"gw{1 + i % 2}/s{i}", device_id=dev,
                   client="app" if i else "speaker")
    await call(SESSION, "library_save", uris=tracks[:5] + [album.uri, f"spotify:artist:{album.artist_ids[0]}"])
    await call(SESSION, "library_remove", uris=[tracks[2]])
    await call(SESSION, "disconnect", principal=SYSTEM, conn="gw2/s1")
    await call(SESSION, "end_connection", device_id="d5")
    await call(SESSION, "connect", principal=SYSTEM, conn="gw3/s9", device_id="d2", client="yjs", iat=5)

    expected = {
        "read_at_s": clock[0],      # the reads below, in this order, each 1.5 s after the previous
        "cluster": await call(DEVICE_GROUP, "subscribe"),
        "stream_counts": await call(DEVICE_GROUP, "stream_counts"),
        "recent": [[it["track"]["uri"], it["played_at"], (it["context"] or {}).get("uri")]
                   for it in (await call(DEVICE_GROUP, "recently_played"))["items"]],
        "connections": await call(SESSION, "list_connections"),
        "library": {k: await call(SESSION, "library_list", type=k) for k in ("track", "album", "artist")},
        "resume": await call(SESSION, "resume", since=0),
        "revoked": await call(SESSION, "check_device", device_id="d5"),
    }
    await host.close(passivate=False)        # as if killed: the tail after the last snapshot stays records
    await store.close()
    await asyncio.sleep(0)
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "legacy-e3f2686.sqlite").write_bytes(db.read_bytes())
    (out / "legacy-e3f2686.json").write_text(json.dumps({"catalog": cat.to_dict(), "expected": expected},
                                                        sort_keys=True) + "\n")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
