"""Listening events: how many events a server ingests per second through the batch upload, and the
pipeline lag (the consumer's commit minus the server's acceptance of the event) at that rate.

    python -m simulations.bench_events [--users 40] [--batches 10] [--batch 50] [--clients 8]
                                       [--paced 0.8 | --rate N] [--redis-url URL --postgres-dsn DSN]

One in-process server (LocalServer: gateway, one host, the consumer in the same event loop; SQLite
entity store, SQLite event log and counts under a temporary data dir, or PostgreSQL + Redis Streams
with the flags), driven over HTTP by `--clients` concurrent uploaders, each POSTing batches of
`--batch` events of distinct plays (`POST /v1/me/player/events`). Phase 1 uploads as fast as the
server answers: events accepted per second. Phase 2 uploads `--paced` times that rate (or `--rate`
events/s: the same offered load for every run of a before/after pair), spread evenly, and reports
the lag percentiles there (phase 1's lag is printed too: at saturation it is a queue).
Afterwards the counts are reconciled (no difference expected) and checked against what was sent.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import aiohttp

from syncopate.events.reconcile import reconcile


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def run(args) -> dict:
    from gateway.auth import Auth
    from syncopate.server import LocalServer, ServerSpec
    data = tempfile.mkdtemp(prefix="bench-events-")
    spec = ServerSpec(data_dir=data, port=0, hosts=1, log_level="WARNING", redis_url=args.redis_url,
                      postgres_dsn=args.postgres_dsn, prefix=f"bench{int(time.time())}_",
                      gateway={"rest_rate": 1e9, "rest_burst": 1e9})
    srv = await LocalServer(spec).start()
    consumer = srv.events.consumer
    auth = Auth(srv.secret)
    cat = srv.gateway.ctx.catalog
    uris = [t.uri for t in cat.tracks if t.duration_ms >= 70_000][:500]
    now = int(time.time() * 1000)
    seq = [0]

    def batch(user: int, k: int) -> dict:
        # distinct, non-overlapping plays of one device, within the last 30 days
        base = now - 20 * 86_400_000 + k * args.batch * 100_000
        evs = []
        for i in range(args.batch):
            seq[0] += 1
            evs.append({"event_id": f"e{k}-{i}", "device_id": "phone", "uri": uris[(user * 7 + k * args.batch + i) % len(uris)],
                        "played_at_ms": base + i * 100_000, "ms_played": 60_000})
        return {"events": evs}

    tokens = [auth.mint(f"bench-u{u}") for u in range(args.users)]

    async def phase(http, first_k: int, n_batches: int, interval_s: float | None) -> tuple[int, float]:
        jobs = [(u, first_k + k) for k in range(n_batches) for u in range(args.users)]
        queue: asyncio.Queue = asyncio.Queue()
        for j in jobs:
            queue.put_nowait(j)
        accepted = [0]
        t0 = time.perf_counter()
        start_at = {j: t0 + i * interval_s for i, j in enumerate(jobs)} if interval_s else {}

        async def client():
            while not queue.empty():
                u, k = queue.get_nowait()
                if interval_s:
                    delay = start_at[(u, k)] - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)       # pacing the load, not synchronisation
                async with http.post(f"{srv.url}/v1/me/player/events", json=batch(u, k),
                                     headers={"Authorization": f"Bearer {tokens[u]}"}) as r:
                    body = await r.json()
                    assert r.status == 200, body
                    accepted[0] += body["accepted"]
        await asyncio.gather(*[client() for _ in range(args.clients)])
        return accepted[0], time.perf_counter() - t0

    async def settle(total: int, timeout: float = 300.0):
        deadline = time.monotonic() + timeout
        while consumer.streams < total:
            assert time.monotonic() < deadline, "the consumer did not catch up"
            await asyncio.sleep(0.05)

    out = {}
    try:
        async with aiohttp.ClientSession() as http:
            consumer.lag_ms = []
            n1, dt1 = await phase(http, 0, args.batches, None)
            await settle(n1)
            lag1 = list(consumer.lag_ms)
            rate = n1 / dt1
            consumer.lag_ms = []
            per_batch_s = args.batch / (args.rate or rate * args.paced)
            n2, dt2 = await phase(http, args.batches, args.batches, per_batch_s)
            await settle(n1 + n2)
            lag2 = list(consumer.lag_ms)
        rep = await reconcile(data, bus=srv.events.bus, counts=srv.events.counts)
        total = sum(n for d in (await srv.events.counts.stream_counts()).values() for n in d.values())
        out = {"events_phase1": n1, "seconds_phase1": dt1, "events_per_s": rate,
               "lag1_p50_ms": pct(lag1, 50), "lag1_p99_ms": pct(lag1, 99),
               "events_phase2": n2, "seconds_phase2": dt2, "paced_events_per_s": n2 / dt2,
               "lag_p50_ms": pct(lag2, 50), "lag_p99_ms": pct(lag2, 99), "lag_max_ms": max(lag2) if lag2 else None,
               "counted": total, "sent": n1 + n2, "differences": len(rep["differences"]),
               "bus": srv.events.bus.name, "counts_store": srv.events.counts.name}
    finally:
        await srv.stop()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--batches", type=int, default=10, help="batches per user per phase")
    ap.add_argument("--batch", type=int, default=50, help="events per upload (at most 200)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--paced", type=float, default=0.8, help="phase 2's rate as a fraction of phase 1's")
    ap.add_argument("--rate", type=float, default=None, help="phase 2's rate in events/s (instead of --paced)")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--postgres-dsn", default=None)
    args = ap.parse_args(argv)
    r = asyncio.run(run(args))
    print(f"bus={r['bus']} counts={r['counts_store']} users={args.users} batch={args.batch} clients={args.clients}")
    print(f"ingest (as fast as answered): {r['events_phase1']} events in {r['seconds_phase1']:.2f} s = "
          f"{r['events_per_s']:.0f} events/s; lag there p50 {r['lag1_p50_ms']:.0f} ms p99 {r['lag1_p99_ms']:.0f} ms")
    target = f"{args.rate:.0f} events/s" if args.rate else f"{args.paced:.0%}"
    print(f"paced at {target}: {r['events_phase2']} events in {r['seconds_phase2']:.2f} s = "
          f"{r['paced_events_per_s']:.0f} events/s; pipeline lag p50 {r['lag_p50_ms']:.0f} ms "
          f"p99 {r['lag_p99_ms']:.0f} ms max {r['lag_max_ms']:.0f} ms")
    print(f"counted {r['counted']} of {r['sent']} sent; reconcile differences: {r['differences']}")
    return 0 if r["counted"] == r["sent"] and r["differences"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
