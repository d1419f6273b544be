"""collab: P collaborative playlists x E editors each, app websocket clients and Yjs clients.

Per playlist: editor 0 (an app client) creates it (collaborative) and makes every other editor an
`editor` collaborator. round(E x --yjs-share) of the editors are unmodified Yjs clients (Node, yjs
+ y-websocket on /v1/yjs/playlists/{id}); the rest are app clients on /v1/ws, subscribed to the
playlist, each keeping a replica of the entry order from the subscribe answer and the deltas of
`playlist.changed`. Every editor edits --rate times per second (Poisson):
  app: 70 % add one track at a random position in the first half, 15 % remove one of its own
       tracks, 15 % move one entry (reorder with the replica's snapshot_id: positions as of that
       snapshot); an app client has one edit in flight at a time, so its acks come in order
  yjs: insert one Y.Map {id, uri, added_by, added_at} at a random index
Each editor slot j uses its own slice of the catalog, so every (playlist, track) has one writer and
the expected end state is exact: a track is there iff its writer's last acknowledged op added it.
--offline-share of the editors go offline once for --offline-s seconds (an app client queues its
edits and sends them as one burst after reconnecting and resubscribing with `since`; a Yjs client
disconnects its provider and keeps editing its local document, merged on reconnect).

Reported: ack latency per op, fan-out latency (edit sent -> the entry arrives at each other
replica, app and Yjs, one wall clock), delivery ratio (every (edit, other replica) pair), and
convergence: every app replica and every Yjs document equal to the server's entry list, every
acknowledged edit present (or absent after its acknowledged removal), every Yjs insert present.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import ClassVar

from protocols.uris import BASE62
from simulations.client import SimClient
from simulations.scenarios.base import Scenario
from simulations.scenarios.model import PlaylistReplica, read_playlist


def _pid(rng: random.Random) -> str:
    return "".join(rng.choice(BASE62) for _ in range(22))


class _Editor:
    def __init__(self, pl: _Playlist, j: int, user: str, uris: list[str]) -> None:
        self.pl, self.j, self.user, self.uris = pl, j, user, uris
        self.client: SimClient | None = None
        self.replica = PlaylistReplica(pl.pid)
        self.seen: set[str] = set()             # uris whose insert reached this replica
        self.next = 0
        self.present: dict[str, bool] = {}      # own uris: True once an add was acked
        self.busy = False
        self.offline = False
        self.queued: list[str] = []
        self.back_at = 0.0                      # wall ms when it last came back online


class _Playlist:
    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.editors: list[_Editor] = []
        self.expect: dict[str, tuple[bool, object]] = {}   # uri -> (present?, change id) from app acks
        self.uncertain: set[str] = set()


class Collab(Scenario):
    name = "collab"
    description = "P playlists x E editors (app websocket and Yjs clients), edits, offline bursts"
    params: ClassVar[dict] = {"playlists": 4, "editors": 4, "rate": 1.0, "offline_share": 0.25, "offline_s": 2.0,
              "yjs_share": 0.25, "encoding": "json"}
    help: ClassVar[dict] = {"playlists": "collaborative playlists", "editors": "editors per playlist (the first creates it)",
            "rate": "edits per editor per second", "offline_share": "share of editors that go offline once",
            "offline_s": "how long an offline burst lasts (seconds)",
            "yjs_share": "share of editors that are Node Yjs clients (0: app clients only)"}

    async def setup(self) -> None:
        P, E = int(self.p["playlists"]), int(self.p["editors"])
        n_yjs = min(E - 1, round(E * float(self.p["yjs_share"]))) if E > 1 else 0
        self.pls: list[_Playlist] = []
        self.sent_wall: dict[tuple[str, str], tuple[float, str]] = {}   # (pid, uri) -> (wall ms, sender)
        self.yjs_sent: list[tuple[str, str, str, bool]] = []            # (pid, uri, entry id, online)
        self.yjs_clients: list[_Editor] = []
        self.yjs_seen: dict[int, set[str]] = {}
        self.yjs = None
        self.bursts = 0
        per = max(50, len(self.tracks) // E)
        rng = random.Random(f"{self.run_id}:{self.p.get('seed', 7)}")     # new ids on every run
        app_editors: list[_Editor] = []
        for p in range(P):
            pl = _Playlist(_pid(rng))
            self.pls.append(pl)
            for j in range(E):
                ed = _Editor(pl, j, self.user(f"p{p}e{j}"), self.tracks[j * per:(j + 1) * per])
                pl.editors.append(ed)
                if j >= E - n_yjs:
                    self.yjs_clients.append(ed)
                else:
                    ed.client = self.client(ed.user)
                    app_editors.append(ed)
        await self.connect_all(ed.client for ed in app_editors)
        # create, then invite the collaborators
        for pl in self.pls:
            owner = pl.editors[0]
            res = await owner.client.call("playlist.create", {"id": pl.pid, "name": f"sim collab {pl.pid[:6]}",
                                                              "collaborative": True, "public": False})
            self.rec.ok("setup:playlist.create", res)
            for ed in pl.editors[1:]:
                await owner.client.call("playlist.set_collaborator",
                                        {"id": pl.pid, "user_id": ed.user, "role": "editor"})
        # subscribe every app editor (its replica starts from the answer)
        for ed in app_editors:
            c = ed.client
            c.on("playlist.changed", self._on_push(ed))
            c.on("resync", self._on_resync(ed))
            c.on_reconnect(self._resubscribe(ed))
            res = await c.subscribe(ed.replica.entity)
            ed.replica.load(res.payload, res.version)
            ed.seen.update(ed.replica.uris.get(i) for i in ed.replica.ids)
        # the Yjs clients: one Node process
        if self.yjs_clients:
            from simulations.client import ws_url
            from simulations.yjs_node import YjsEditors
            offline = self._offline_plan(self.yjs_clients)
            cfg = {"base": ws_url(self.target.url, "/v1/yjs/playlists"), "rate": float(self.p["rate"]),
                   "seconds": self.seconds, "settle_ms": 15000,
                   "clients": [{"pid": ed.pl.pid, "token": self.target.token(ed.user), "user": ed.user,
                                "uris": ed.uris, "offline": offline.get(id(ed), [])} for ed in self.yjs_clients]}
            self.yjs = YjsEditors(cfg, self._on_yjs)
            ready = await self.yjs.start()
            if ready.get("synced") != len(self.yjs_clients):
                raise RuntimeError(f"only {ready.get('synced')} of {len(self.yjs_clients)} Yjs clients synced")
        self.app_editors = app_editors

    def _offline_plan(self, editors: list[_Editor]) -> dict[int, list]:
        share, dur = float(self.p["offline_share"]), float(self.p["offline_s"])
        n = round(len(editors) * share)
        chosen = self.rng.sample(editors, n) if n else []
        return {id(ed): [[round(self.rng.uniform(0.2, 0.55) * self.seconds, 2), dur]] for ed in chosen}

    # -- pushes ------------------------------------------------------------------------------------
    def _on_push(self, ed: _Editor):
        def handler(msg, t):
            if msg.get("entity") != ed.replica.entity:
                return
            ed.replica.on_push(msg)
            now = time.time() * 1000
            for op in (msg.get("payload") or {}).get("delta") or ():
                if op.get("op") != "insert":
                    continue
                for it in op.get("items") or ():
                    uri = it.get("uri")
                    if uri in ed.seen:
                        continue                          # a move: the same entry again
                    ed.seen.add(uri)
                    self._fanout(ed, uri, now, "fanout:to_app")
        return handler

    def _fanout(self, ed: _Editor, uri: str, now_ms: float, metric: str) -> None:
        """Edit sent -> entry arrived at another replica. An edit made offline, or one that reached a
        replica that was offline meanwhile, is a catch-up, not a live fan-out: reported apart."""
        sent = self.sent_wall.get((ed.pl.pid, uri))
        if sent is None or sent[1] == ed.user:
            return
        wall, _sender, offline = sent
        if offline or ed.back_at > wall:
            self.rec.latency("catchup:after_offline", now_ms - wall)
        else:
            self.rec.latency(metric, now_ms - wall)

    def _on_resync(self, ed: _Editor):
        def handler(msg, t):
            if msg.get("entity") == ed.replica.entity:
                ed.replica.load(msg.get("payload"), msg.get("version"))
                ed.seen.update(ed.replica.uris.get(i) for i in ed.replica.ids)
        return handler

    def _resubscribe(self, ed: _Editor):
        async def hook(c: SimClient) -> None:
            if ed.offline:
                return
            res = await c.subscribe(ed.replica.entity, since=max(0, ed.replica.version))
            ed.replica.load(res.payload, res.version)
            ed.seen.update(ed.replica.uris.get(i) for i in ed.replica.ids)
        return hook

    def _on_yjs(self, ev: dict) -> None:
        kind = ev.get("ev")
        if kind == "sent":
            ed = self.yjs_clients[ev["k"]]
            self.sent_wall[(ev["pid"], ev["uri"])] = (ev["t"], ed.user, not ev.get("online", True))
            self.yjs_sent.append((ev["pid"], ev["uri"], ev["id"], bool(ev.get("online"))))
            self.rec.count("yjs:sent")
        elif kind == "recv":
            seen = self.yjs_seen.setdefault(ev["k"], set())
            if ev["uri"] in seen:
                return
            seen.add(ev["uri"])
            self._fanout(self.yjs_clients[ev["k"]], ev["uri"], ev["t"], "fanout:to_yjs")
        elif kind in ("offline", "online"):
            self.rec.count(f"yjs:{kind}")
            ed = self.yjs_clients[ev["k"]]
            ed.offline = kind == "offline"
            if kind == "online":
                ed.back_at = ev["t"]

    # -- edits -------------------------------------------------------------------------------------
    async def _edit(self, ed: _Editor) -> None:
        if ed.busy:
            self.rec.count("skipped:busy")
            return
        own = [u for u, here in ed.present.items() if here]
        r = self.rng.random()
        if ed.offline:
            if ed.next < len(ed.uris):
                ed.queued.append(ed.uris[ed.next])
                ed.next += 1
            return
        ed.busy = True
        try:
            if len(own) < 3 or r < 0.70:
                await self._add(ed, [ed.uris[ed.next % len(ed.uris)]], random_pos=True)
                ed.next += 1
            elif r < 0.85:
                await self._remove(ed, self.rng.choice(own))
            else:
                await self._move(ed)
        finally:
            ed.busy = False

    async def _add(self, ed: _Editor, uris: list[str], *, random_pos: bool) -> None:
        pl = ed.pl
        payload: dict = {"id": pl.pid, "uris": uris}
        n = len(ed.replica.ids)
        if random_pos and n and self.rng.random() < 0.5:
            payload["position"] = self.rng.randint(0, n // 2)
        now = time.time() * 1000
        for u in uris:
            self.sent_wall[(pl.pid, u)] = (now, ed.user, False)
        res = await self.req(ed.client, "playlist.add", payload, expected=("BAD_REQUEST",))
        if res is None:
            for u in uris:
                pl.uncertain.add(u)
            return
        for u in uris:
            cid = (pl.pid, u, res.version)
            pl.expect[u] = (True, cid)
            pl.uncertain.discard(u)
            ed.present[u] = True
            self.ledger.ack(cid, self.rec.rel(res.done))

    async def _remove(self, ed: _Editor, uri: str) -> None:
        pl = ed.pl
        res = await self.req(ed.client, "playlist.remove", {"id": pl.pid, "tracks": [{"uri": uri}]})
        if res is None:
            pl.uncertain.add(uri)
            return
        cid = (pl.pid, uri, res.version)
        pl.expect[uri] = (False, cid)
        pl.uncertain.discard(uri)
        ed.present[uri] = False
        self.ledger.ack(cid, self.rec.rel(res.done))

    async def _move(self, ed: _Editor) -> None:
        n = len(ed.replica.ids)
        if n < 2:
            return
        start = self.rng.randrange(n)
        before = self.rng.randrange(n + 1)
        await self.req(ed.client, "playlist.reorder",
                       {"id": ed.pl.pid, "range_start": start, "insert_before": before, "range_length": 1,
                        "snapshot_id": ed.replica.snapshot_id}, expected=("CONFLICT", "BAD_REQUEST"))

    async def _offline_burst(self, ed: _Editor, at: float, dur: float) -> None:
        await asyncio.sleep(max(0.0, at - self.rec.now()))          # scheduled time of the outage
        c = ed.client
        ed.offline = True
        self.rec.mark("offline", name=f"offline {ed.user}")
        c.reconnect_enabled = False
        await c.drop()
        await asyncio.sleep(dur)                                    # the outage lasts `dur` by definition
        c.reconnect_enabled = True
        if not await self.reconnect(c):
            return
        ed.offline = False
        ed.back_at = time.time() * 1000
        await self._resubscribe(ed)(c)
        burst, ed.queued = ed.queued, []
        self.bursts += 1
        self.rec.count("offline_burst_edits", len(burst))
        # the burst: every queued edit at once (one add each, all in flight together)
        ed.busy = True
        try:
            await asyncio.gather(*(self._add(ed, [u], random_pos=False) for u in burst))
        finally:
            ed.busy = False

    async def run(self, seconds: float) -> None:
        period = 1 / float(self.p["rate"]) if float(self.p["rate"]) > 0 else None
        tasks = [self.wait_load_end()]
        if self.yjs is not None:
            await self.yjs.go()
        if period:
            tasks += [self.every(period, lambda ed=ed: self._edit(ed)) for ed in self.app_editors]
        plan = self._offline_plan(self.app_editors)
        for ed in self.app_editors:
            for at, dur in plan.get(id(ed), []):
                tasks.append(self._offline_burst(ed, at, dur))
        await asyncio.gather(*tasks)

    # -- verification ------------------------------------------------------------------------------------
    async def verify(self) -> dict:
        diverged, replicas, apply_errors = [], 0, 0
        wrong_items, checked_items, dup_ids = 0, 0, 0
        examples: list[str] = []
        server: dict[str, list[tuple[str, str]]] = {}
        versions: dict[str, int] = {}
        for pl in self.pls:
            entries, _snap, version = await read_playlist(pl.editors[0].client, pl.pid)
            server[pl.pid] = entries
            versions[pl.pid] = version or 0
            ids = [e[0] for e in entries]
            if len(set(ids)) != len(ids):
                dup_ids += len(ids) - len(set(ids))
        # app replicas: wait (bounded) for the last pushes, then compare
        await self.wait_until(lambda: all(ed.replica.version >= versions[ed.pl.pid] for ed in self.app_editors), 15)
        for ed in self.app_editors:
            replicas += 1
            apply_errors += ed.replica.apply_errors
            want = [e[0] for e in server[ed.pl.pid]]
            if ed.replica.ids != want:
                diverged.append(f"app {ed.user}: {len(ed.replica.ids)} entries vs server {len(want)}")
        # Yjs documents: ask until they match (their last updates may still be in flight), bounded
        yjs_final: dict[int, dict] = {}
        if self.yjs is not None:
            deadline = time.monotonic() + 20
            while True:
                yjs_final = await self.yjs.final()
                bad = [k for k, f in yjs_final.items()
                       if [e[0] for e in f["entries"]] != [e[0] for e in server[f["pid"]]]]
                if not bad or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)                # poll the Node replicas again
            for k, ed in enumerate(self.yjs_clients):
                replicas += 1
                f = yjs_final.get(k)
                if f is None or [tuple(e) for e in f["entries"]] != [tuple(e) for e in server[ed.pl.pid]]:
                    n = len(f["entries"]) if f else None
                    diverged.append(f"yjs {ed.user}: {n} entries vs server {len(server[ed.pl.pid])}")
        # acknowledged app edits, and every Yjs insert
        for pl in self.pls:
            uris = [e[1] for e in server[pl.pid]]
            have = set(uris)
            for uri, (present, cid) in pl.expect.items():
                if uri in pl.uncertain:
                    continue
                checked_items += 1
                if (uri in have) != present or (present and uris.count(uri) != 1):
                    wrong_items += 1
                    self.ledger.missing.add(cid)
                    if len(examples) < 10:
                        examples.append(f"{pl.pid} {uri}: expected {'present once' if present else 'absent'}")
        yjs_missing = 0
        by_pid = {pid: {e[0] for e in ents} for pid, ents in server.items()}
        for pid, uri, eid, _online in self.yjs_sent:
            if eid not in by_pid.get(pid, ()):
                yjs_missing += 1
                if len(examples) < 20:
                    examples.append(f"yjs insert {eid} ({uri}) missing from {pid}")
        # delivery: every entry on the server reached every other replica of its playlist
        for pl in self.pls:
            final_uris = {e[1] for e in server[pl.pid]}
            for uri in final_uris:
                sender = self.sent_wall.get((pl.pid, uri), (0, None, False))[1]
                for ed in pl.editors:
                    if ed.user == sender:
                        continue
                    self.rec.expect("playlist:entries")
                    if ed in self.yjs_clients:
                        k = self.yjs_clients.index(ed)
                        got = uri in self.yjs_seen.get(k, ()) or any(
                            e[1] == uri for e in (yjs_final.get(k) or {}).get("entries", ()))
                    else:
                        got = uri in ed.seen or uri in {ed.replica.uris.get(i) for i in ed.replica.ids}
                    if got:
                        self.rec.delivered("playlist:entries")
        ok = not diverged and wrong_items == 0 and yjs_missing == 0 and dup_ids == 0
        return {"ok": ok, "playlists": len(self.pls), "replicas_checked": replicas, "diverged": len(diverged),
                "delta_apply_errors": apply_errors, "acked_changes": len(self.ledger.acked),
                "items_checked": checked_items, "items_wrong": wrong_items, "acked_missing": len(self.ledger.missing),
                "yjs_inserts": len(self.yjs_sent), "yjs_inserts_missing": yjs_missing, "duplicate_entry_ids": dup_ids,
                "entries_total": sum(len(v) for v in server.values()),
                "missing_examples": diverged[:10] + examples}

    def progress_info(self) -> str:
        return super().progress_info() + f"  yjs sent {self.rec.counters.get('yjs:sent', 0)}"

    def extra_report(self) -> dict:
        return {"collab": {"app_editors": len(self.app_editors), "yjs_editors": len(self.yjs_clients),
                           "offline_bursts": self.bursts,
                           "yjs_stderr": self.yjs.stderr_tail[-5:] if self.yjs else []}}

    async def teardown(self) -> None:
        if self.yjs is not None:
            await self.yjs.stop()
        await super().teardown()
