"""Instant start: time from `play` sent to the first byte of the first chunk (docs/rights.md).

    .venv/bin/python -m simulations.bench_start [--users 10] [--plays 30] [--store sqlite|postgres]
                                                [--think-ms 200] [--warmup 1]

An in-process server (LocalServer: one host, one gateway, the generated 10,000-track catalog, the
default SQLite store in a temporary directory unless --store postgres). Each of `users` users has one
device on a websocket; the users run concurrently, each doing `plays` plays one after the other
(`think-ms` between them). One play: `player.play` with three random tracks playable in the user's
market is sent (t0); the device waits for the `player.changed` push that carries the stream
manifest for that track (t1: the play is durable, pushed, signed); it fetches the manifest's first
chunk from the edge with its Range header, and t2 is the arrival of the first body byte.

The first `warmup` plays of each user are not measured (they include the device group's read of
the user's market from the account, its ask, the edge's account read that fills the gateway's market
cache, and the first write of the device group); run with --warmup 0 to see them. Prints p50 / p99 / max of t1 - t0 (play -> manifest) and t2 - t0 (play -> first byte), the count,
and the refusals (expected: none).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def run(users: int, plays: int, think_ms: int, store: str, seed: int, warmup: int = 1) -> dict:
    from gateway.auth import Auth
    from simulations.client import SimClient, new_session
    from syncopate.server import LocalServer, ServerSpec

    tmp = tempfile.mkdtemp(prefix="bench-start-")
    kw = {}
    if store == "postgres":
        kw = {"postgres_dsn": "postgresql://127.0.0.1:5432/test", "prefix": f"bs{int(time.time())}_"}
    spec = ServerSpec(data_dir=tmp, port=0, hosts=1, gateway={"rest_rate": 10_000, "rest_burst": 10_000}, **kw)
    srv = await LocalServer(spec).start()
    auth = Auth(srv.secret)
    cat = srv.gateway.ctx.catalog
    playable = [t.uri for t in cat.tracks if t.playable_in("US")]
    to_manifest: list[float] = []
    to_byte: list[float] = []
    refused: list[str] = []
    http = new_session()

    async def user(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        uid, did = f"bench-{i}", f"dev-{i}"
        waiting: dict = {}

        def on_push(msg, at):
            st = (msg.get("payload") or {}).get("stream")
            fut = waiting.get("fut")
            if st and fut is not None and not fut.done() and st["tracks"][0]["uri"] == waiting["uri"] \
                    and msg["payload"]["revision"] > waiting["rev"]:
                fut.set_result((st, at, msg["payload"]["revision"]))

        c = SimClient(srv.url, auth.mint(uid, device_id=did), http=http, device_id=did, reconnect=False)
        c.on("player.changed", on_push)
        await c.connect()
        reg = await c.call("device.register", {"device_id": did, "name": did, "type": "computer"})
        rev = reg.payload["revision"]
        for k in range(warmup + plays):
            uris = rng.sample(playable, 3)
            loop = asyncio.get_running_loop()
            waiting.update(fut=loop.create_future(), uri=uris[0], rev=rev)
            t0 = time.perf_counter()
            try:
                await c.call("player.play", {"device_id": did, "uris": uris})
                st, t1, rev = await asyncio.wait_for(waiting["fut"], 10)
                status, t2, n = await c.fetch_first_chunk(st)
            except Exception as exc:              # a refusal is counted, not fatal to the run
                refused.append(repr(exc)[:200])
                continue
            if status != 206 or n <= 0:
                refused.append(f"edge answered {status} with {n} bytes")
                continue
            if k >= warmup:
                to_manifest.append((t1 - t0) * 1000)
                to_byte.append((t2 - t0) * 1000)
            await asyncio.sleep(think_ms / 1000)       # the listener's pause between plays (workload shape)
        await c.close()

    try:
        await asyncio.gather(*(user(i) for i in range(users)))
    finally:
        await http.close()
        await srv.stop()
    return {"manifest": to_manifest, "first_byte": to_byte, "refused": refused}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_start", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--plays", type=int, default=30)
    p.add_argument("--think-ms", type=int, default=200)
    p.add_argument("--store", default="sqlite", choices=("sqlite", "postgres"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="plays per user not measured (default 1)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from simulations import tune_gc
    tune_gc()
    r = asyncio.run(run(a.users, a.plays, a.think_ms, a.store, a.seed, a.warmup))
    print(f"instant start: {a.users} users x {a.plays} plays (+{a.warmup} warm-up each), think {a.think_ms} ms, "
          f"store {a.store}")
    print("| measure | count | p50 ms | p99 ms | max ms | mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, key in (("play -> manifest push", "manifest"), ("play -> first byte of first chunk", "first_byte")):
        xs = r[key]
        print(f"| {name} | {len(xs)} | {pct(xs, 0.5):.1f} | {pct(xs, 0.99):.1f} | {max(xs, default=0):.1f} | "
              f"{statistics.fmean(xs) if xs else float('nan'):.1f} |")
    print(f"refused: {len(r['refused'])}" + (f" (first: {r['refused'][0]})" if r["refused"] else ""))
    return 0 if not r["refused"] else 1


if __name__ == "__main__":
    sys.exit(main())
