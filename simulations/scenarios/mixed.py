"""mixed: a music service's traffic mix: reads far above writes, plays far above edits.

--users U users, each with two devices on websockets (dev0 smartphone, dev1 computer), both
registered in the user's device group; dev0 is also the app client (reads, library, playlist edits)
and subscribes to the user's "home" playlist. P = max(2, U // 10) public collaborative playlists of
20 tracks, home playlist of user i = i mod P; its owner and the next 3 users are its editors.
Every user plays its home playlist (a playlist context) from the start.

Each user performs one action every 1/--rate seconds (Poisson), one at a time, drawn with these
weights (percent of actions; they are the ratios the report quotes):

  reads 70      player.state 20, playlist.items (a page) 20, library.contains 15 (hearts on a page),
                library.list 5, playlist.get 5, player.devices 5
  playback 22   player.next 8, player.play (a playlist or album context) 5, pause/resume 4,
                seek 2, volume 1, device.progress (a 30 s listening report: a stream) 2
  library 5     library.save 3, library.remove 2
  edits 2.5     playlist.add 1.5, playlist.remove 0.5, playlist.reorder 0.5 (editors only; others read)
  transfer 0.5  player.transfer to the user's other device

So plays (next + play, 13 %) outnumber playlist edits (2.5 %) about 5 to 1 and reads are 70 %. A
listening report is sent twice with the same event id (a client retry after a reconnect): the
second must answer `duplicate`, never count a second stream.

Convergence: every library item as its last acknowledged save/remove left it; every playlist as its
acknowledged adds/removes left it, and every subscribed replica equal to the server's entries; all
online devices of a user at the server's latest version with the same state; no duplicate stream.
"""
from __future__ import annotations

import asyncio
import random
import uuid
from typing import ClassVar

from actors.account import (
    DEFAULT_COUNTRY as USERS_MARKET,  # a user without an account: this market
)
from simulations.scenarios.base import Scenario
from simulations.scenarios.collab import _pid
from simulations.scenarios.connect import (
    EXPECTED,
    _Dev,
    _User,
    device_verdict,
    reset_gaps,
    resync_baseline,
    server_revisions,
    track_cluster,
)
from simulations.scenarios.model import LibraryTracker, PlaylistReplica, read_playlist

MIX = [  # (action, weight in percent)
    ("player.state", 20), ("playlist.items", 20), ("library.contains", 15), ("library.list", 5),
    ("playlist.get", 5), ("player.devices", 5),
    ("player.next", 8), ("player.play", 5), ("pause_resume", 4), ("player.seek", 2), ("player.volume", 1),
    ("device.progress", 2),
    ("library.save", 3), ("library.remove", 2),
    ("playlist.add", 1.5), ("playlist.remove", 0.5), ("playlist.reorder", 0.5),
    ("player.transfer", 0.5),
]
assert abs(sum(w for _, w in MIX) - 100) < 1e-9
GROUPS = {"reads": 70, "playback": 22, "library writes": 5, "playlist edits": 2.5, "transfers": 0.5}


class _Pl:
    def __init__(self, pid: str, owner: int) -> None:
        self.pid, self.owner = pid, owner
        self.editors: set[int] = set()
        self.expect: dict[str, tuple[bool, object]] = {}
        self.uncertain: set[str] = set()


class Mixed(Scenario):
    name = "mixed"
    description = "a realistic mix (reads >> writes, plays >> edits), ratios in the module doc"
    params: ClassVar[dict] = {"users": 100, "rate": 1.0, "encoding": "json"}
    help: ClassVar[dict] = {"users": "users (two devices each)", "rate": "actions per user per second"}

    async def setup(self) -> None:
        U = int(self.p["users"])
        P = max(2, U // 10)
        rng = random.Random(f"{self.run_id}:{self.p.get('seed', 11)}")   # new ids on every run
        self.users: list[_User] = []
        self.lib = LibraryTracker()
        self.pls = [_Pl(_pid(rng), (p * U) // P) for p in range(P)]
        for pl in self.pls:
            pl.editors = {(pl.owner + k) % U for k in range(4)}
        self.home = {i: self.pls[i % P] for i in range(U)}
        self.replicas: dict[int, PlaylistReplica] = {}
        self.streams_duplicated = 0
        self.streams_counted = 0
        self.slice = max(8, len(self.tracks) // max(1, U))
        # album contexts a listener here may play: its users have no account country, so their market
        # is US (docs/rights.md); a region-restricted release is refused as TRACK_UNAVAILABLE, which is
        # the server being right, not a failure of the run
        cat = self.target.catalog
        self.albums = [a.uri for a in list(cat.albums)
                       if all(t.playable_in(USERS_MARKET) for t in cat.album_tracks(a.id))][:200]
        for i in range(U):
            u = _User(self.user(i))
            u.i = i
            u.next = 0
            u.present: dict[str, bool] = {}
            self.users.append(u)
            for k in range(2):
                d = _Dev(u, k, f"dev{k}")
                d.client = self.client(u.uid, device_id=d.did)
                d.client.on("player.changed", self._on_device_push(d))
                d.client.on("resync", self._on_device_push(d, resync=True))
                d.client.on_reconnect(self._reregister(d))
                d.client.on_disconnect(self._gone(d))
                u.devs.append(d)
        await self.connect_all(d.client for u in self.users for d in u.devs)
        sem = asyncio.Semaphore(32)
        # playlists: created by their owners, 20 tracks, editors invited
        owners = {pl.owner: pl for pl in self.pls}

        async def make(pl: _Pl) -> None:
            async with sem:
                c = self.users[pl.owner].devs[0].client
                await c.call("playlist.create", {"id": pl.pid, "name": f"sim mixed {pl.pid[:6]}",
                                                 "public": True, "collaborative": True})
                res = await c.call("playlist.add", {"id": pl.pid, "uris": self.tracks[-20 - pl.owner % 50:][:20]})
                self.rec.ok("setup:playlist.add", res)
                for e in sorted(pl.editors - {pl.owner}):
                    await c.call("playlist.set_collaborator", {"id": pl.pid, "user_id": self.users[e].uid,
                                                               "role": "editor"})

        await asyncio.gather(*(make(pl) for pl in owners.values()))

        async def start(u: _User) -> None:
            async with sem:
                for d in u.devs:
                    await self._register(d)
                app = u.devs[0].client
                rep = self.replicas[u.i] = PlaylistReplica(self.home[u.i].pid)
                app.on("playlist.changed", lambda msg, t, rep=rep: rep.on_push(msg))
                app.on("resync", lambda msg, t, rep=rep: rep.load(msg.get("payload"), msg.get("version"))
                       if msg.get("entity") == rep.entity else None)
                res = await app.subscribe(rep.entity)
                rep.load(res.payload, res.version)
                res = await app.call("player.play", {"context_uri": f"spotify:playlist:{rep.pid}",
                                                     "device_id": u.devs[0].did})
                u.acked.append((res.version, "play"))
                res = await app.call("player.repeat", {"state": "context"})
                u.acked.append((res.version, "repeat"))

        await asyncio.gather(*(start(u) for u in self.users))
        self.setup_gaps = reset_gaps(self.users)
        self.weights = [w for _, w in MIX]
        self.actions = [a for a, _ in MIX]

    async def _register(self, d: _Dev) -> None:
        res = await d.client.call("device.register", {
            "device_id": d.did, "name": f"{d.user.uid} {d.did}", "type": ("smartphone", "computer")[d.k],
            "volume_percent": 60, "supports_volume": True, "is_restricted": False})
        d.online = True
        if isinstance(res.payload, dict) and res.payload.get("devices") is not None:
            self._arrive(d, res.version, res.payload)

    def _reregister(self, d: _Dev):
        async def hook(c) -> None:
            await self._register(d)
            if d.k == 0:
                rep = self.replicas.get(d.user.i)
                if rep is not None:
                    res = await c.subscribe(rep.entity, since=max(0, rep.version))
                    rep.load(res.payload, res.version)
        return hook

    def _gone(self, d: _Dev):
        def hook(c) -> None:
            d.online = False
            d.last_rev = None
        return hook

    def _on_device_push(self, d: _Dev, resync: bool = False):
        def handler(msg, t):
            if resync:                        # a host restarted: the gateway re-subscribed for us
                if not str(msg.get("entity", "")).startswith("devicegroup:"):
                    return
                self.rec.count("resync:devicegroup")
                resync_baseline(d, msg)
            self._arrive(d, msg.get("version"), msg.get("payload") or {})
        return handler

    @staticmethod
    def _arrive(d: _Dev, v, cluster: dict) -> None:
        if track_cluster(d, v, cluster, 0.0) and len(d.versions) > 8:
            del d.versions[:-1], d.times[:-1]

    # -- actions ----------------------------------------------------------------------------------------
    def _own_uris(self, u: _User) -> list[str]:
        base = u.i * self.slice
        return [self.tracks[(base + k) % len(self.tracks)] for k in range(self.slice)]

    async def _act(self, u: _User) -> None:
        if u.busy:
            self.rec.count("skipped:busy")
            return
        u.busy = True
        try:
            action = self.rng.choices(self.actions, self.weights)[0]
            await self._do(u, action)
        finally:
            u.busy = False

    async def _do(self, u: _User, action: str) -> None:
        app = u.devs[0]
        c = app.client
        pl = self.home[u.i]
        player = (u.state().get("player") or {})
        if action == "player.state" or action == "player.devices":
            await self.req(c, action, {})
        elif action == "playlist.items":
            await self.req(c, action, {"id": pl.pid, "offset": 0, "limit": 100})
        elif action == "playlist.get":
            await self.req(c, action, {"id": pl.pid})
        elif action == "library.contains":
            await self.req(c, action, {"uris": self.rng.sample(self.tracks, 20)})
        elif action == "library.list":
            await self.req(c, action, {"type": "track", "limit": 50})
        elif action in ("player.next", "player.seek", "player.volume", "pause_resume", "player.play"):
            if action == "pause_resume":
                action, payload = ("player.pause", {}) if player.get("is_playing") else ("player.play", {})
            elif action == "player.play":
                ctx = f"spotify:playlist:{pl.pid}" if self.rng.random() < 0.6 else self.rng.choice(self.albums)
                payload = {"context_uri": ctx}
            elif action == "player.seek":
                payload = {"position_ms": self.rng.randint(0, max(1, (player.get("duration") or 120_000) // 2))}
            elif action == "player.volume":
                payload = {"volume_percent": self.rng.randint(10, 100)}
            else:
                payload = {}
            res = await self.req(c, action, payload, expected=EXPECTED)
            if res is not None:
                u.acked.append((res.version, action))
                self.ledger.ack((u.uid, res.version, action), self.rec.rel(res.done))
        elif action == "player.transfer":
            active = u.state().get("active_device_id")
            target = next((d for d in u.devs if d.did != active and d.online), None)
            if target is not None:
                res = await self.req(c, action, {"device_ids": [target.did], "play": True}, expected=EXPECTED)
                if res is not None:
                    u.acked.append((res.version, action))
                    self.ledger.ack((u.uid, res.version, action), self.rec.rel(res.done))
        elif action == "device.progress":
            track = ((player.get("track") or {}).get("uri")) or self.tracks[0]
            args = {"event_id": uuid.uuid4().hex, "device_id": app.did, "uri": track, "ms_played": 31_000}
            first = await self.req(c, action, dict(args), mutate=False)
            again = await self.req(c, action, dict(args), mutate=False, metric="ack:device.progress(repeat)")
            first_counted = first is not None and (first.payload or {}).get("counted")
            again_counted = again is not None and (again.payload or {}).get("counted")
            if first_counted:
                self.streams_counted += 1
                if again_counted:
                    self.streams_duplicated += 1      # the same event counted a second time
            elif first is None and again_counted:
                # The first report failed (a host killed under it) and was not recorded: the repeat
                # is the one that counts. Had the first been recorded, the repeat would answer
                # duplicate, and a count here would still be a single one.
                self.streams_counted += 1
        elif action in ("library.save", "library.remove"):
            uris = self._own_uris(u)
            uri = uris[u.next % len(uris)]
            u.next += 1
            saved = self.lib.expect.get((u.uid, uri), (False, None))[0]
            op = "library.remove" if saved else "library.save"
            if action == "library.remove" and not saved:
                saved_ones = [x for x in uris if self.lib.expect.get((u.uid, x), (False,))[0]]
                if saved_ones:
                    uri, op = self.rng.choice(saved_ones), "library.remove"
            res = await self.req(c, op, {"uris": [uri]})
            if res is None:
                self.lib.failed(u.uid, uri)
            else:
                cid = (u.uid, uri, res.version)
                self.lib.acked(u.uid, uri, op == "library.save", cid)
                self.ledger.ack(cid, self.rec.rel(res.done))
        elif action.startswith("playlist."):
            if u.i not in pl.editors:
                await self.req(c, "playlist.items", {"id": pl.pid, "offset": 0, "limit": 100})
                return
            uris = self._own_uris(u)
            present = [x for x in uris if pl.expect.get(x, (False,))[0]]
            if action == "playlist.add" or (action == "playlist.remove" and not present):
                uri = next((x for x in uris[u.next % len(uris):] + uris if not pl.expect.get(x, (False,))[0]), None)
                u.next += 1
                if uri is None:
                    return
                res = await self.req(c, "playlist.add", {"id": pl.pid, "uris": [uri]})
                self._pl_result(pl, uri, True, res)
            elif action == "playlist.remove":
                uri = self.rng.choice(present)
                res = await self.req(c, "playlist.remove", {"id": pl.pid, "tracks": [{"uri": uri}]})
                self._pl_result(pl, uri, False, res)
            else:
                rep = self.replicas[u.i]
                n = len(rep.ids)
                if n >= 2:
                    await self.req(c, "playlist.reorder", {"id": pl.pid, "range_start": self.rng.randrange(n),
                                                           "insert_before": self.rng.randrange(n + 1),
                                                           "snapshot_id": rep.snapshot_id},
                                   expected=("CONFLICT", "BAD_REQUEST"))

    def _pl_result(self, pl: _Pl, uri: str, present: bool, res) -> None:
        if res is None:
            pl.uncertain.add(uri)
            return
        cid = (pl.pid, uri, res.version)
        pl.expect[uri] = (present, cid)
        pl.uncertain.discard(uri)
        self.ledger.ack(cid, self.rec.rel(res.done))

    async def _heartbeats(self) -> None:
        async def beat(d: _Dev) -> None:
            if d.online:
                await self.req(d.client, "device.heartbeat", {"device_id": d.did}, metric="ack:device.heartbeat",
                               expected=("NOT_FOUND",))
        await asyncio.gather(*(self.every(10.0, lambda d=d: beat(d), jitter=False)
                               for u in self.users for d in u.devs))

    async def run(self, seconds: float) -> None:
        rate = float(self.p["rate"])
        tasks = [self.wait_load_end(), self._heartbeats()]
        if rate > 0:
            tasks += [self.every(1 / rate, lambda u=u: self._act(u)) for u in self.users]
        await asyncio.gather(*tasks)

    # -- verification --------------------------------------------------------------------------------------
    async def verify(self) -> dict:
        examples: list[str] = []
        # library
        client_of = {u.uid: u.devs[0].client for u in self.users}
        lib_checked, lib_wrong, missing, ex = await self.lib.verify(client_of)
        self.ledger.missing.update(missing)
        examples += ex
        # playlists: expected items, and every replica equal to the server
        pl_wrong = pl_checked = 0
        server: dict[str, tuple[list, int]] = {}
        for pl in self.pls:
            entries, _snap, version = await read_playlist(self.users[pl.owner].devs[0].client, pl.pid)
            server[pl.pid] = (entries, version or 0)
            uris = [e[1] for e in entries]
            for uri, (present, cid) in pl.expect.items():
                if uri in pl.uncertain:
                    continue
                pl_checked += 1
                if (uri in uris) != present:
                    pl_wrong += 1
                    self.ledger.missing.add(cid)
                    examples.append(f"{pl.pid} {uri}: expected {'present' if present else 'absent'}")
        await self.wait_until(lambda: all(r.version >= server[r.pid][1] for r in self.replicas.values()), 10)
        replicas_diverged = sum(1 for r in self.replicas.values() if r.ids != [e[0] for e in server[r.pid][0]])
        # device groups
        server_rev = await server_revisions(self.users, examples)
        await self.wait_until(lambda: all((d.last_rev or 0) >= server_rev.get(u.uid, 0)
                                          for u in self.users for d in u.online()), 10)
        groups_diverged, behind = device_verdict(self.users, server_rev, examples)
        for u in self.users:
            vs = [v for v, _ in u.acked if isinstance(v, int)]
            if len(set(vs)) != len(vs):
                groups_diverged += 1
                examples.append(f"{u.uid}: an acknowledged version was handed out twice")
        gaps = sum(d.gaps for u in self.users for d in u.devs)
        ooo = sum(d.out_of_order for u in self.users for d in u.devs)
        ok = lib_wrong == 0 and pl_wrong == 0 and replicas_diverged == 0 and groups_diverged == 0 and ooo == 0 \
            and self.streams_duplicated == 0 and behind == 0 and gaps == 0
        return {"ok": ok, "users": len(self.users), "playlists": len(self.pls),
                "replicas_checked": len(self.replicas) + sum(len(u.online()) for u in self.users),
                "library_items_checked": lib_checked, "library_items_wrong": lib_wrong,
                "playlist_items_checked": pl_checked, "playlist_items_wrong": pl_wrong,
                "playlist_replicas_diverged": replicas_diverged, "device_groups_diverged": groups_diverged,
                "devices_behind": behind, "revision_gaps": gaps, "setup_revision_gaps": self.setup_gaps, "out_of_order": ooo, "streams_counted": self.streams_counted,
                "streams_counted_twice": self.streams_duplicated,
                "acked_changes": len(self.ledger.acked), "acked_missing": len(self.ledger.missing),
                "missing_examples": examples[:20]}

    def extra_report(self) -> dict:
        done: dict[str, int] = {}
        for name, samples in self.rec.lat.items():
            if name.startswith("ack:"):
                done[name[4:]] = len(samples)
        total = sum(done.values()) or 1
        return {"mix": {"weights_percent": dict(MIX), "groups_percent": GROUPS,
                        "observed_percent": {k: round(100 * v / total, 2) for k, v in sorted(done.items())}}}
