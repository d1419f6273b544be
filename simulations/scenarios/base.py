"""What every scenario shares: parameters, clients, the ledger of acknowledged changes, pacing."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

from simulations.client import ClientError, Result, SimClient, new_session
from simulations.report import Recorder

log = logging.getLogger("syncopate.sim")


class Ledger:
    """Acknowledged changes, each with the time of its acknowledgement (recorder clock).

    verify() marks the ones missing from what the server answers after the run; the harness then
    counts, per fault, how many changes acknowledged BEFORE the fault are missing (must be 0)."""

    def __init__(self) -> None:
        self.acked: dict[Any, float] = {}
        self.missing: set = set()

    def ack(self, change_id: Any, t: float) -> None:
        self.acked.setdefault(change_id, t)

    def acked_before(self, t: float) -> int:
        return sum(1 for x in self.acked.values() if x < t)

    def missing_before(self, t: float) -> int:
        return sum(1 for c in self.missing if self.acked.get(c, float("inf")) < t)


class Scenario:
    name = ""
    description = ""
    params: ClassVar[dict[str, Any]] = {}     # name -> default (the CLI adds an option for each)
    help: ClassVar[dict[str, str]] = {}
    # True: the load generator's cyclic collector is off while the load runs (after the set-up's
    # objects are frozen), for benchmarks whose latencies must not include this process's own
    # collection pauses; long runs (soaks) keep it on, or the load generator's garbage would grow
    # for the whole run.
    quiet_collector: ClassVar[bool] = False

    def __init__(self, target, rec: Recorder, params: dict, *, seconds: float) -> None:
        self.target = target
        self.rec = rec
        self.p = params
        self.seconds = seconds
        self.ledger = Ledger()
        self.clients: list[SimClient] = []
        self.http = None
        self.rng = random.Random(params.get("seed", 1))
        self.tracks = [t.uri for t in target.catalog.tracks]
        self.run_id = f"{int(time.time()) % 100000:05d}{random.SystemRandom().randrange(10**6):06d}"
        self._stop = asyncio.Event()
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def resolve_params(cls, given: dict) -> dict:
        out = dict(cls.params)
        for k, v in given.items():
            if v is not None:
                out[k.replace("-", "_")] = v
        return out

    def describe_size(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.p.items())

    # -- clients ---------------------------------------------------------------------------------
    def user(self, i: int | str) -> str:
        return f"sim{self.run_id}-{self.name[:4]}-u{i}"

    def client(self, user: str, *, device_id: str | None = None, client: str = "app", **kw) -> SimClient:
        if self.http is None:
            self.http = new_session()
        token = self.target.token(user, device_id=device_id)
        c = SimClient(self.target.url_fn, token, http=self.http, device_id=device_id, client=client,
                      name=f"{user}/{device_id or client}", on_retry=self.rec.retry_hook,
                      encoding=self.p.get("encoding", "json"), **kw)
        c.user = user
        self.clients.append(c)
        return c

    async def connect_all(self, clients: Iterable[SimClient], concurrency: int = 64) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(c: SimClient) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        await c.connect()
                        self.rec.latency("connect", c.last_connect_s * 1000)
                        return
                    except ClientError as err:
                        if not err.retryable or attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))       # retry backoff

        await asyncio.gather(*(one(c) for c in clients))

    async def reconnect(self, c: SimClient, timeout: float = 90.0) -> bool:
        """Connect again after a deliberate drop, retrying while the server is unreachable."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                await c.connect()
                return True
            except ClientError as err:
                if not err.retryable or time.monotonic() > deadline:
                    self.rec.error("reconnect", err.code)
                    return False
                self.rec.error("reconnect", err.code, retried=True)
            await asyncio.sleep(delay)                  # reconnect backoff
            delay = min(2.0, delay * 2)

    # -- requests with bookkeeping ---------------------------------------------------------------
    async def req(self, c: SimClient, mtype: str, payload: dict | None = None, *, metric: str | None = None,
                  expected: tuple[str, ...] = (), **kw) -> Result | None:
        """call() with the recorder: an ack sample on success, an error sample on failure.
        `expected` error codes (e.g. ALREADY_PAUSED from a race) are counted, not failures."""
        self.inflight += 1
        self._idle.clear()
        try:
            res = await c.call(mtype, payload, **kw)
        except ClientError as err:
            if err.code in expected:
                self.rec.count(f"refused:{mtype}:{err.code}")
            else:
                self.rec.error(mtype, err.code)
            return None
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
        self.rec.ok(metric or f"ack:{mtype}", res)
        return res

    # -- pacing ------------------------------------------------------------------------------------
    async def every(self, period_s: float, fn: Callable[[], Awaitable[None]], *, jitter: bool = True,
                    until: float | None = None) -> None:
        """Call fn about every period_s (Poisson-ish if jitter) until the load phase ends.
        Open loop: a slow answer doesn't slow the schedule down (fn runs as its own task)."""
        loop = asyncio.get_running_loop()
        end = until if until is not None else self.seconds
        first = self.rng.random() * period_s                    # spread the first calls
        if first >= end - self.rec.now():
            return
        await asyncio.sleep(first)
        tasks: set = set()
        while not self._stop.is_set() and self.rec.now() < end:
            t = loop.create_task(fn())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            gap = self.rng.expovariate(1 / period_s) if jitter else period_s
            left = end - self.rec.now()
            if gap >= left:
                break
            await asyncio.sleep(gap)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_load_end(self) -> None:
        remaining = self.seconds - self.rec.now()
        if remaining > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), remaining)   # the load phase lasts `seconds`
            except TimeoutError:
                pass

    async def settle(self, timeout: float = 60.0) -> None:
        """Every request of the load phase answered (or failed), every client reconnected."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("%d requests still in flight after %g s", self.inflight, timeout)
        deadline = time.monotonic() + timeout
        for c in self.clients:
            if c.reconnect_enabled and not c._closing:
                try:
                    await c.wait_connected(max(0.1, deadline - time.monotonic()))
                except ClientError:
                    pass

    async def wait_until(self, cond: Callable[[], bool], timeout: float, poll_s: float = 0.05) -> bool:
        """Wait for a condition fed by pushes (they arrive on other tasks), with a deadline."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    # -- hooks ------------------------------------------------------------------------------------
    async def setup(self) -> None:
        raise NotImplementedError

    async def run(self, seconds: float) -> None:
        raise NotImplementedError

    async def verify(self) -> dict:
        raise NotImplementedError

    def progress_info(self) -> str:
        acked = sum(len(v) for k, v in self.rec.lat.items() if k.startswith("ack:"))
        errs = sum(1 for e in self.rec.errors if not e[3])
        return f"acked {acked:,}  errors {errs}  retries {sum(1 for e in self.rec.errors if e[3])}"

    def extra_report(self) -> dict:
        return {}

    def client_stats(self) -> dict:
        cs = self.clients
        return {"clients": len(cs), "connects": sum(c.connects for c in cs),
                "disconnects": sum(c.disconnects for c in cs), "retries": sum(c.retries for c in cs),
                "frames_in": sum(c.frames_in for c in cs), "frames_out": sum(c.frames_out for c in cs),
                "pushes": sum(sum(c.pushes.values()) for c in cs),
                "unmatched_errors": sum(len(c.unmatched_errors) for c in cs)}

    async def teardown(self) -> None:
        self._stop.set()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        if self.http is not None:
            await self.http.close()
            self.http = None


def chunks(xs: list, n: int) -> Iterable[list]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]
