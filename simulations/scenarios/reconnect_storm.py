"""reconnect-storm: N clients drop their connections at the same instant and reconnect at once.

Each of N users has one app connection (subscribed to its session: library pushes) that saves and
removes tracks in its library (--rate per client per second). At --storm-at seconds (default 40 %
into the run) every one of them loses its TCP connection without a close frame (what a mobile
network or a load balancer failing does) and reconnects right away with jittered backoff, then
sends `session.resume {since: last library version seen}`. A share of the users (--writers-share)
has a second connection that is not dropped and changes the library during the outage: the
dropped connection must learn those changes from the resume answer or the pushes after it.

Measured: reconnect time per client (drop -> connected -> resumed), the time until all N are back,
errors during the storm, library changes missed (resume delivery), and the end state: every
client's library version equals the server's, and every acknowledged save/remove is there.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import ClassVar

from simulations.client import ClientError, SimClient
from simulations.report import summarize
from simulations.scenarios.base import Scenario
from simulations.scenarios.model import LibraryTracker


class ReconnectStorm(Scenario):
    name = "reconnect-storm"
    description = "N clients drop at once and reconnect (resume); changes made meanwhile must arrive"
    params: ClassVar[dict] = {"clients": 200, "rate": 0.5, "storm_at": None, "writers_share": 0.1, "encoding": "json"}
    help: ClassVar[dict] = {"clients": "connections that drop at once (one user each)",
            "rate": "library changes per client per second",
            "storm_at": "seconds into the load phase (default 40%% of --seconds)",
            "writers_share": "share of users with a second connection that writes during the outage"}

    async def setup(self) -> None:
        n = int(self.p["clients"])
        self.lib = LibraryTracker()
        self.main: list[SimClient] = []
        self.writers: dict[str, SimClient] = {}
        self.libv: dict[str, int] = {}                 # client name -> last library version seen
        self.seen: dict[str, set[int]] = {}            # client name -> library versions seen
        self.writer_changes: list[tuple[str, int]] = []   # (user, library version) written during the outage
        self.reconnect_ms: list[float] = []
        self.resumes = {"full": 0, "deltas": 0}
        self.storm_t: float | None = None
        self.all_back_s: float | None = None
        share = float(self.p["writers_share"])
        n_writers = min(n, math.ceil(n * share)) if share > 0 else 0
        # each user writes its own slice of the catalog: one writer per (user, uri)
        self.slice = max(4, len(self.tracks) // max(1, 2 * n))
        for i in range(n):
            u = self.user(i)
            c = self.client(u, client="app")
            self.main.append(c)
            self.libv[c.name] = 0
            self.seen[c.name] = set()
            c.on("library.changed", self._on_lib(c))
            c.on_reconnect(self._resume)
            c.on_disconnect(lambda c: None)
            if i < n_writers:
                w = self.client(u, client="writer")
                self.writers[u] = w
        await self.connect_all(self.main + list(self.writers.values()))
        self.client_of = {c.user: c for c in self.main}

    def _uris(self, i: int, writer: bool) -> list[str]:
        base = (2 * i + (1 if writer else 0)) * self.slice
        return [self.tracks[(base + k) % len(self.tracks)] for k in range(self.slice)]

    def _on_lib(self, c: SimClient):
        def handler(msg, t):
            v = (msg.get("payload") or {}).get("library_version", msg.get("version"))
            if isinstance(v, int):
                self.seen[c.name].add(v)
                self.libv[c.name] = max(self.libv[c.name], v)
        return handler

    async def _resume(self, c: SimClient) -> None:
        since = self.libv[c.name]
        res = await c.call("session.resume", {"since": since}, mutate=False)
        body = res.payload or {}
        if body.get("full"):
            self.resumes["full"] += 1
        else:
            self.resumes["deltas"] += 1
            for entry in body.get("library") or ():
                v = entry.get("library_version")
                if isinstance(v, int):
                    self.seen[c.name].add(v)
        v = body.get("version", res.version)
        if isinstance(v, int):
            self.libv[c.name] = max(self.libv[c.name], v)
            if body.get("full"):
                self.seen[c.name].update(range(since + 1, v + 1))   # a full state covers everything
        if c.disconnected_at is not None:
            ms = (time.perf_counter() - c.disconnected_at) * 1000
            self.reconnect_ms.append(ms)
            self.rec.latency("reconnect+resume", ms)

    async def _toggle(self, c: SimClient, i: int, uris: list[str], state: dict) -> None:
        if state.get("busy"):          # one write per client at a time: acks arrive in order
            self.rec.count("skipped:busy")
            return
        uri = uris[state["k"] % len(uris)]
        state["k"] += 1
        saved = self.lib.expect.get((c.user, uri), (False, None))[0]
        op = "library.remove" if saved else "library.save"
        state["busy"] = True
        try:
            res = await self.req(c, op, {"uris": [uri]})
        finally:
            state["busy"] = False
        if res is None:
            self.lib.failed(c.user, uri)
            return
        cid = (c.user, uri, res.version)
        self.lib.acked(c.user, uri, not saved, cid)
        self.ledger.ack(cid, self.rec.rel(res.done))
        v = (res.payload or {}).get("library_version", res.version)
        if isinstance(v, int) and c.name in self.seen:
            self.seen[c.name].add(v)
            self.libv[c.name] = max(self.libv[c.name], v)
        return v

    async def run(self, seconds: float) -> None:
        rate = float(self.p["rate"])
        storm_at = self.p["storm_at"]
        storm_at = float(storm_at) if storm_at is not None else 0.4 * seconds
        tasks = []
        for i, c in enumerate(self.main):
            uris, state = self._uris(i, False), {"k": 0}
            if rate > 0:
                tasks.append(self.every(1 / rate, lambda c=c, i=i, uris=uris, state=state:
                                        self._toggle(c, i, uris, state)))
        tasks.append(self._storm(storm_at))
        tasks.append(self.wait_load_end())
        await asyncio.gather(*tasks)

    async def _storm(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.rec.now()))        # the storm's scheduled time
        self.storm_t = self.rec.now()
        self.rec.mark("storm", name="storm", clients=len(self.main))
        await asyncio.gather(*(c.drop() for c in self.main))
        t0 = time.perf_counter()
        # writers change the library while the dropped connections are away
        idx = {c.user: i for i, c in enumerate(self.main)}

        async def write(u: str, w: SimClient) -> None:
            uris = self._uris(idx[u], True)
            for uri in uris[:2]:
                saved = self.lib.expect.get((u, uri), (False, None))[0]
                res = await self.req(w, "library.remove" if saved else "library.save", {"uris": [uri]},
                                     metric="ack:library.write_during_storm")
                if res is None:
                    self.lib.failed(u, uri)
                    continue
                cid = (u, uri, res.version)
                self.lib.acked(u, uri, not saved, cid)
                self.ledger.ack(cid, self.rec.rel(res.done))
                self.writer_changes.append((u, res.version))
        await asyncio.gather(*(write(u, w) for u, w in self.writers.items()))
        ok = await self.wait_until(lambda: all(c.is_connected for c in self.main), timeout=120)
        if ok:
            self.all_back_s = time.perf_counter() - t0
        self.rec.mark("storm_end", name="all reconnected" if ok else "not all reconnected")

    def progress_info(self) -> str:
        up = sum(1 for c in self.main if c.is_connected)
        return super().progress_info() + f"  connected {up}/{len(self.main)}"

    async def verify(self) -> dict:
        # the server's library version per user, through the user's own (main) connection
        server_v: dict[str, int] = {}
        errors = []
        for c in self.main:
            try:
                res = await c.call("library.list", {"type": "track", "limit": 1}, mutate=False)
                server_v[c.name] = (res.payload or {}).get("library_version", res.version)
            except ClientError as err:
                errors.append(f"{c.name}: {err.code}")
        # pushes may still be in flight: wait (bounded) until every client caught up
        await self.wait_until(lambda: all(self.libv[c.name] >= server_v.get(c.name, 0) for c in self.main), 15)
        behind = [c.name for c in self.main if self.libv[c.name] < server_v.get(c.name, 0)]
        for u, v in self.writer_changes:
            self.rec.expect("resume:library")
            if v in self.seen[self.client_of[u].name]:
                self.rec.delivered("resume:library")
        checked, wrong, missing, examples = await self.lib.verify(self.client_of)
        self.ledger.missing.update(missing)
        exp, got = self.rec.deliveries["resume:library"] if self.writer_changes else (0, 0)
        return {"ok": not behind and wrong == 0 and not errors and exp == got
                and all(c.is_connected for c in self.main),
                "replicas_checked": len(self.main), "replicas_behind": len(behind),
                "acked_changes": len(self.ledger.acked), "items_checked": checked, "items_wrong": wrong,
                "acked_missing": len(self.ledger.missing),
                "resume_expected": exp, "resume_delivered": got, "read_errors": len(errors),
                "missing_examples": examples + [f"behind: {b}" for b in behind[:5]] + errors[:5]}

    def extra_report(self) -> dict:
        return {"storm": {"at_s": self.storm_t, "clients": len(self.main),
                          "all_reconnected_s": round(self.all_back_s, 3) if self.all_back_s else None,
                          "reconnect_ms": summarize(self.reconnect_ms), "resume_answers": self.resumes,
                          "writers": len(self.writers), "writes_during_outage": len(self.writer_changes)}}
