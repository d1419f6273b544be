"""abuse: the `mixed` workload of legitimate users, first alone, then beside hostile clients.

--users U legitimate users run the mixed scenario's traffic (its module doc) for the whole load
phase. For the first --baseline-s seconds nothing else happens; then the attackers of
simulations/attacks.py run one after another, each bounded in count and time (docs/security.md
lists them and what the server should answer):

  ext_type_frame      msgpack ExtType inside a binary frame's payload
  varint_run:*        a Yjs frame whose varint is a --varint-bytes run of 0xFF: as the message type,
                      as a SyncStep1 state vector, as an update
  slow_reader         a websocket that never reads, re-subscribing --subscribes times to a playlist of
                      10,000 entries
  awareness_flood     5,000 awareness client ids of 2 KB each on one Yjs socket
  subscribe_storm     --subscribes full subscribes of the large playlist at once
  unknown_ids         reads, subscribes, REST GETs and Yjs joins of never-created playlist ids
  yjs_oversize        a Yjs frame over the frame limit
  yjs_rate            Yjs frames over the rate limit
  long_request_line   an HTTP request line with a 100 KB query string
  many_sockets        110 websockets for one user

An attacker that would start too close to the end of the load phase is skipped (and listed so):
give --seconds enough for all of them (60 s does on the 2-core machine).

Report block `abuse`: legitimate latency (p50/p95/p99/max over every acknowledged request) and
failed requests without the attack (the baseline) and with it, and per attacker window; every
attacker's result (errors, close codes, timings); the gateway's budget and limit counters from
/metrics (every metric whose name holds budget, limit, refused, dropped, rejected, closed or
rate) before and after the attacks; and the server's RSS per process in each phase (from the
run's resource samples). Convergence is the mixed scenario's: the attacks must not cost a
legitimate user an acknowledged change.
"""
from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from protocols.uris import new_id
from simulations import attacks as A
from simulations.client import ClientError, SimClient, new_session
from simulations.report import summarize
from simulations.scenarios.mixed import Mixed

log = logging.getLogger("syncopate.sim")
LARGE = 10_000


class Abuse(Mixed):
    name = "abuse"
    description = "legitimate mixed traffic without, then with hostile clients (docs/security.md)"
    params: ClassVar[dict] = {"users": 50, "rate": 1.0, "baseline_s": 10.0, "varint_bytes": 200_000,
                              "subscribes": 100, "encoding": "json"}
    help: ClassVar[dict] = {**Mixed.help, "baseline_s": "seconds of legitimate traffic before the first attack",
                            "varint_bytes": "length of the 0xFF varint runs",
                            "subscribes": "subscribes of the large playlist (slow reader, storm)"}

    async def setup(self) -> None:
        await super().setup()
        self.attack_http = new_session()
        self.abuser = f"sim{self.run_id}-abuse-attacker"
        self.large, self.yjs_pid = new_id(), new_id()
        c = SimClient(self.target.url_fn, self.target.token(self.abuser), http=self.attack_http, reconnect=False,
                      name="attacker-setup")
        await c.connect()
        try:
            await A.large_playlist(c, self.large, self.tracks, LARGE)
            await c.call("playlist.create", {"id": self.yjs_pid, "name": "abuse: yjs", "public": True})
        finally:
            await c.close()
        self.results: list[dict] = []
        self.windows: list[tuple[str, float, float]] = []
        self.metrics_before = await A.scrape_limits(self.attack_http, self.target.url)
        self.metrics_after: dict = {}
        self.attack_start = self.attack_end = None

    def _attackers(self) -> list:
        t, u, http, p = self.target, self.abuser, self.attack_http, self.p
        vb = int(p["varint_bytes"])

        async def slow() -> A.AttackResult:
            r = await A.slow_reader(t, u, self.large, subscribes=int(p["subscribes"]))
            # its answers are on the gateway once a later subscribe of the same entity is answered
            probe = SimClient(t.url_fn, t.token(u + "-probe"), http=http, reconnect=False, name="attacker-probe")
            await probe.connect()
            try:
                await probe.call("subscribe", {"entity": f"playlist:{self.large}"}, mutate=False, timeout=30)
            finally:
                await probe.close()
            return await A.finish_slow_reader(r, timeout_s=5.0)

        return [
            ("ext_type_frame", lambda: A.ext_type_frame(t, u, self.yjs_pid, http=http)),
            ("varint_run:type", lambda: A.varint_run(t, u, self.yjs_pid, where="type", run_bytes=vb, http=http)),
            ("varint_run:state_vector",
             lambda: A.varint_run(t, u, self.yjs_pid, where="state_vector", run_bytes=vb, http=http)),
            ("varint_run:update", lambda: A.varint_run(t, u, self.yjs_pid, where="update", run_bytes=vb, http=http)),
            ("slow_reader", slow),
            ("awareness_flood", lambda: A.awareness_flood(t, u, self.yjs_pid, clients=5_000, state_bytes=2_000,
                                                          joiner=u + "-joiner", http=http)),
            ("subscribe_storm", lambda: A.subscribe_storm(t, u, self.large, subscribes=int(p["subscribes"]),
                                                          http=http)),
            ("unknown_ids", lambda: A.unknown_ids(t, u, n=50, http=http)),
            ("yjs_oversize", lambda: A.yjs_oversize(t, u, self.yjs_pid, frame_bytes=(1 << 20) + 1024, http=http)),
            ("yjs_rate", lambda: A.yjs_rate(t, u, self.yjs_pid, frames=600, http=http)),
            ("long_request_line", lambda: A.long_request_line(t, query_bytes=100_000)),
            ("many_sockets", lambda: A.many_sockets(t, u + "-sockets", sockets=110, http=http)),
        ]

    async def run(self, seconds: float) -> None:
        attacks = asyncio.get_running_loop().create_task(self._attack_phase(seconds))
        await super().run(seconds)
        await attacks

    async def _attack_phase(self, seconds: float) -> None:
        wait = float(self.p["baseline_s"]) - self.rec.now()
        if wait > 0:
            await asyncio.sleep(wait)                # the baseline: legitimate traffic alone
        self.attack_start = self.rec.now()
        self.rec.mark("storm", name="attacks")
        for name, make in self._attackers():
            left = seconds - self.rec.now()
            if left < 1.0:
                self.results.append({"name": name, "skipped": "the load phase ended first"})
                continue
            t0 = self.rec.now()
            self.rec.mark("attack", name=name)
            try:
                res = (await asyncio.wait_for(make(), left)).summary()
            except TimeoutError:
                res = {"name": name, "error": f"still running when the load phase ended ({left:.1f} s)"}
            except Exception as exc:  # noqa: BLE001 - an attacker the server broke is a result too
                res = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
            res["at_s"], res["until_s"] = round(t0, 3), round(self.rec.now(), 3)
            self.windows.append((name, t0, self.rec.now()))
            # the next attacker starts on a server that answers again (one may have broken a host
            # stream; the gateway re-opens it within its 1 s liveness ping): how long that took
            res["recovery_s"] = await self._recovered(max(1.0, seconds - self.rec.now()))
            self.results.append(res)
        self.attack_end = self.rec.now()
        self.metrics_after = await A.scrape_limits(self.attack_http, self.target.url)

    async def _recovered(self, timeout: float) -> float | None:
        """Seconds until the attacker's playlists (one on each host, in general) answer again."""
        t0 = self.rec.now()
        c = SimClient(self.target.url_fn, self.target.token(self.abuser + "-check"), http=self.attack_http,
                      reconnect=False, name="attacker-check")
        try:
            await c.connect()
            for _ in range(200):                 # bounded: one try per 50 ms of backoff
                try:
                    for pid in (self.large, self.yjs_pid):
                        await c.request("playlist.items", {"id": pid, "limit": 1}, timeout=2)
                    return round(self.rec.now() - t0, 3)
                except ClientError as err:
                    if not err.retryable or self.rec.now() - t0 > timeout:
                        return None
                    await asyncio.sleep(0.05)    # retry backoff while the stream is re-opened
            return None
        except ClientError:
            return None
        finally:
            await c.close()

    # -- the report --------------------------------------------------------------------------------------
    def _legit(self, t0: float, t1: float) -> dict:
        xs = [ms for n, s in self.rec.lat.items() if n.startswith("ack:") for t, ms in s if t0 <= t < t1]
        out = summarize(xs)
        out["failed"] = sum(1 for t, _op, _c, retried in self.rec.errors if t0 <= t < t1 and not retried)
        out["retried_attempts"] = sum(1 for t, _op, _c, retried in self.rec.errors if t0 <= t < t1 and retried)
        return out

    def extra_report(self) -> dict:
        out = super().extra_report()
        start = self.attack_start if self.attack_start is not None else float("inf")
        end = self.attack_end if self.attack_end is not None else start
        out["abuse"] = {
            "baseline_s": self.p["baseline_s"], "attack_start_s": _r(self.attack_start), "attack_end_s": _r(end),
            "legit": {"without_attack": self._legit(0.0, start), "with_attack": self._legit(start, end),
                      "per_attack": {n: self._legit(a, b) for n, a, b in self.windows}},
            "attacks": self.results,
            "limit_metrics": {"before": self.metrics_before, "after": self.metrics_after},
        }
        return out

    async def teardown(self) -> None:
        await super().teardown()
        if getattr(self, "attack_http", None) is not None:
            await self.attack_http.close()


def _r(x):
    return None if x is None or x == float("inf") else round(x, 3)
