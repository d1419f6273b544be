"""Runtime benchmark: acknowledged durable changes per second and ack latency, end to end.

    .venv/bin/python -m simulations.bench_runtime [--stores sqlite,postgres] [--clients 1,50,500]
                                                  [--seconds 10] [--window 1] [--activations 300]
                                                  [--hosts 2] [--gateways 1]
    (also: syncopate bench runtime ...)

Throughput part: for each store a real server is started (RayServer: --hosts host actors,
--gateways gateway actors, the clients spread over the gateways round robin; PostgreSQL under a fresh table prefix, dropped afterwards). N websocket
clients connect, one user each, and toggle a track in their own library (library.save /
library.remove, each with an op id) in a closed loop with --window requests in flight per client.
Every answer is an acknowledgement AFTER the record is committed to the durable store (gateway ->
host -> group commit -> ack). After --warmup seconds the benchmark counts for --seconds:
acknowledged changes/s and the ack latency p50/p99/max measured by the client; the CPU time of
each server process per ack; the hosts' group commits in the window (count, entries per commit,
durations as the host's loop sees them, as histograms) and, for SQLite, the store thread's own
view (the COMMIT's duration, how many took over 10 ms, the background checkpoints). The per-connection
rate limit is raised for the run (ws_rate 5,000/s) so that it measures the runtime, not the limiter.

Activation part (in-process, no network): --activations session entities with 200 saved tracks
each are written and passivated (snapshot), then activated again by a fresh EntityHost on a fresh
store connection: time of the first command on each (acquire + load + restore + the command).
Rows: SQLite, PostgreSQL, and the tiered store with a warm Redis (a first pass filled the cache).

The load generator runs on the same 2 cores as the server: the numbers are a floor for the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid

from simulations.report import pct

PG = os.environ.get("SYNCOPATE_BENCH_POSTGRES_DSN", os.environ.get("SYNCOPATE_TEST_POSTGRES",
                                                                    "postgresql://postgres@127.0.0.1:5432/test"))
REDIS = os.environ.get("SYNCOPATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _throughput(target, n: int, seconds: float, warmup: float, window: int) -> dict:
    from simulations.client import ClientError, SimClient, new_session
    http = new_session()
    run = uuid.uuid4().hex[:6]
    tracks = [t.uri for t in list(target.catalog.tracks)[:64]]
    # With several gateways the clients are spread over them, round robin.
    urls = target.server.urls() if target.server is not None else [target.url]
    clients = [SimClient(_const(urls[i % len(urls)]), target.token(f"bench{run}-{i}"), http=http, name=f"b{i}")
               for i in range(n)]
    sem = asyncio.Semaphore(64)

    async def conn(c):
        async with sem:
            await c.connect()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(c) for c in clients))
    connect_s = time.perf_counter() - t0
    lat: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter() + warmup
    end = start + seconds

    async def lane(c: SimClient, k: int) -> None:
        saved = set()
        i = k
        while time.perf_counter() < end:
            uri = tracks[i % len(tracks)]
            i += window
            op = "library.remove" if uri in saved else "library.save"
            try:
                res = await c.call(op, {"uris": [uri]}, retries=3)
            except ClientError as err:
                errors[err.code] = errors.get(err.code, 0) + 1
                continue
            (saved.discard if op == "library.remove" else saved.add)(uri)
            if start <= res.sent and res.done <= end:
                lat.append(res.ms)

    from simulations.resources import ResourceSampler
    sampler = ResourceSampler(target.resolve_pids, interval_s=0.5)

    loop = asyncio.get_running_loop()
    stats: list = []

    async def sample():
        await asyncio.sleep(max(0.0, start - time.perf_counter()))   # measure the counted window only
        sampler.start()
        stats.append(await loop.run_in_executor(None, _host_stats, target.server))
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        stats.append(await loop.run_in_executor(None, _host_stats, target.server))
        return await sampler.stop()

    samp = asyncio.ensure_future(sample())
    await asyncio.gather(*(lane(c, k) for c in clients for k in range(window)))
    res_summary = await samp
    await asyncio.gather(*(c.close() for c in clients))
    await http.close()
    return {"clients": n, "window": window, "seconds": seconds, "acked": len(lat),
            "acked_per_s": round(len(lat) / seconds, 1), "p50_ms": _r(pct(sorted(lat), .5)),
            "p99_ms": _r(pct(sorted(lat), .99)), "max_ms": _r(max(lat) if lat else None),
            "errors": errors, "connect_s": round(connect_s, 2),
            "server_cpu_pct": res_summary.get("server_cpu_pct_mean"),
            "loadgen_cpu_pct": (res_summary["processes"].get("harness (load generator)") or {}).get("cpu_pct_mean"),
            # CPU per ack (ms of CPU time of each server process over the window / acks in it): the
            # figure a shared machine moves least
            "cpu_ms_per_ack": {k: round(v["cpu_s"] * 1000 / max(1, len(lat)), 4)
                               for k, v in res_summary["processes"].items() if v.get("server")},
            **_commit_stats(stats)}


def _host_stats(server) -> list[dict]:
    """Every host's stats() (blocking Ray calls: run off the loop); [] without a RayServer."""
    if server is None:
        return []
    import ray

    from actors.ray_host import host_name
    return ray.get([ray.get_actor(host_name(server.cluster, i)).stats.remote() for i in range(server.spec.hosts)])


def _commit_stats(stats: list) -> dict:
    """The hosts' group commits over the window (the second stats() minus the first, summed over hosts)."""
    if len(stats) < 2 or not stats[0]:
        return {}
    try:
        from actors.host_metrics import COMMIT_MS_BOUNDS, COMMIT_SIZE_BOUNDS
    except ImportError:
        COMMIT_MS_BOUNDS = COMMIT_SIZE_BOUNDS = ()

    def diff(field):
        return sum(b[field] - a[field] for a, b in zip(*stats))

    def hist(field, bounds):
        counts = [sum(b[field][i] - a[field][i] for a, b in zip(*stats)) for i in range(len(bounds) + 1)]
        return {f"<={x}": c for x, c in zip(bounds, counts)} | {f">{bounds[-1]}": counts[-1]}

    commits = diff("commits")
    out = {"commits": commits, "entries_per_commit": round(diff("committed_entries") / max(1, commits), 2),
           "commit_ms_mean": round(diff("commit_seconds") * 1000 / max(1, commits), 3)}
    if "commit_ms_hist" in stats[0][0]:          # (a server from before the histograms has none)
        out["commit_ms_hist"] = hist("commit_ms_hist", COMMIT_MS_BOUNDS)
        out["commit_size_hist"] = hist("commit_size_hist", COMMIT_SIZE_BOUNDS)
    st = [[s.get("store_timing") or {} for s in ss] for ss in stats]
    if st[0] and all(st[0]) and "appends" in st[0][0]:
        def sdiff(field):
            return sum(b[field] - a[field] for a, b in zip(*st))
        n = sdiff("appends")
        out["store_view"] = {"appends": n, "append_ms_mean": round(sdiff("append_s") * 1000 / max(1, n), 3),
                        "commit_ms_mean": round(sdiff("commit_s") * 1000 / max(1, n), 3),
                        "commits_over_10ms": sdiff("commits_over_10ms"), "checkpoints": sdiff("checkpoints"),
                        "checkpoint_ms_mean": round(sdiff("checkpoint_s") * 1000 / max(1, sdiff("checkpoints")), 2),
                        "writer_waits": sdiff("writer_waits"),
                        "writer_wait_ms_mean": round(sdiff("writer_wait_s") * 1000 / max(1, sdiff("writer_waits")), 3)}
    return out


def _const(value):
    return lambda: value


def _r(x):
    return None if x is None else round(x, 2)


async def _activation(store_name: str, n: int) -> dict:
    """First-command latency of n passivated session entities (200 liked tracks each)."""
    import tempfile

    from actors.entity import Command, Env, Principal
    from actors.host import EntityHost
    from actors.session import SessionEntity
    from catalog import Catalog
    from storage.factory import make_store
    cat = Catalog.generated()
    tracks = [t.uri for t in list(cat.tracks)[:200]]
    env = Env(catalog=cat)
    kinds = {"session": SessionEntity}
    prefix = f"benchrt_{uuid.uuid4().hex[:8]}_"
    tmp = tempfile.mkdtemp(prefix="bench-rt-")

    def store():
        if store_name == "sqlite":
            return make_store(tmp)
        if store_name == "postgres":
            return make_store(tmp, postgres_dsn=PG, prefix=prefix)
        return make_store(tmp, redis_url=REDIS, postgres_dsn=PG, prefix=prefix)

    users = [f"act{i}" for i in range(n)]

    async def host_on(st):
        await st.start()
        h = EntityHost("bench", st, kinds, env, idle_timeout_s=3600)
        await h.start()
        return h

    st = store()
    h = await host_on(st)
    for u in users:                     # write: 4 saves of 50 each, then passivate (snapshot)
        for k in range(0, 200, 50):
            await h.call(Command("session", u, "library_save", {"uris": tracks[k:k + 50]}, Principal(u)))
    await h.close(passivate=True)
    await st.close()
    passes = []
    for _ in range(2):                  # pass 1 also warms caches (PG buffers; Redis for tiered)
        st = store()
        h = await host_on(st)
        lat = []
        for u in users:
            t0 = time.perf_counter()
            await h.call(Command("session", u, "library_contains", {"uris": tracks[:1]}, Principal(u)))
            lat.append((time.perf_counter() - t0) * 1000)
        await h.close(passivate=False)
        await st.close()
        passes.append(sorted(lat))
    if store_name in ("postgres", "tiered"):
        from storage.postgres import PostgresStore
        pg = PostgresStore(PG, prefix=prefix)
        await pg.start()
        await pg.drop()
        await pg.close()
    if store_name == "tiered":
        from storage.redis import RedisStore
        r = RedisStore(REDIS, prefix=prefix)
        await r.start()
        await r.drop()
        await r.close()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    warm = passes[-1]
    return {"store": store_name if store_name != "tiered" else "tiered (warm Redis)", "entities": n,
            "p50_ms": _r(pct(warm, .5)), "p99_ms": _r(pct(warm, .99)), "max_ms": _r(warm[-1]),
            "first_pass_p99_ms": _r(pct(passes[0], .99))}


def main(argv: list[str] | None = None) -> int:
    from simulations import tune_gc
    tune_gc()
    p = argparse.ArgumentParser(prog="python -m simulations.bench_runtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite,postgres")
    p.add_argument("--clients", default="1,50,500")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--window", type=int, default=1, help="requests in flight per client")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--gateways", type=int, default=1, help="gateways (the clients are spread over them)")
    p.add_argument("--activations", type=int, default=300, help="entities per activation row (0: skip)")
    p.add_argument("--activation-stores", default="sqlite,postgres,tiered")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from simulations.faults import FaultSpec
    from simulations.harness import OwnServer
    rows = []
    for store in [s for s in a.stores.split(",") if s]:
        own = OwnServer(store=store, faults=FaultSpec(), hosts=a.hosts, gateways=a.gateways, postgres_dsn=PG,
                        gateway_config={"ws_rate": 5000.0, "ws_burst": 10000.0}).start()
        try:
            target = own.target()
            for n in [int(x) for x in a.clients.split(",") if x]:
                r = asyncio.run(_throughput(target, n, a.seconds, a.warmup, a.window))
                r["store"] = store
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        finally:
            own.stop()
    acts = []
    if a.activations:
        for store in [s for s in a.activation_stores.split(",") if s]:
            r = asyncio.run(_activation(store, a.activations))
            acts.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(table(rows, acts, a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"throughput": rows, "activation": acts, "args": vars(a)}, f, indent=1)
    return 0


def table(rows: list[dict], acts: list[dict], a) -> str:
    out = [(f"Acknowledged durable changes (library.save/remove toggles; {a.window} in flight per client; "
           f"{a.seconds:g} s after {a.warmup:g} s warm-up; {a.hosts} hosts, {a.gateways} gateway(s); load generator on the same machine)"),
           "", "| store | clients | acked/s | p50 ms | p99 ms | max ms | errors | server CPU % | load gen CPU % |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['store']} | {r['clients']} | {r['acked_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
                   f"{r['max_ms']} | {r['errors'] or 0} | {r.get('server_cpu_pct')} | {r.get('loadgen_cpu_pct')} |")
    out.append("")
    out.append("Target: >= 10,000 acknowledged durable changes/s with p99 <= 10 ms.")
    for r in rows:
        if r.get("commits"):
            out.append(f"{r['store']} {r['clients']} clients: CPU ms/ack {r['cpu_ms_per_ack']}; {r['commits']} commits, "
                       f"{r['entries_per_commit']} entries each, {r['commit_ms_mean']} ms mean; durations {r.get('commit_ms_hist')};"
                       f" sizes {r.get('commit_size_hist')}"
                       + (f"; in the store {r['store_view']}" if r.get("store_view") else ""))
    if acts:
        out += ["", "Activation of a passivated session entity (200 liked tracks), first command, in-process:", "",
                "| store | entities | p50 ms | p99 ms | max ms | cold pass p99 ms |", "|---|---:|---:|---:|---:|---:|"]
        for r in acts:
            out.append(f"| {r['store']} | {r['entities']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                       f"{r['first_pass_p99_ms']} |")
        out.append("")
        out.append("Targets: activation p99 <= 5 ms from the Redis tier, <= 20 ms from PostgreSQL.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
