"""Store micro-benchmark: activation latency and append (group commit) throughput per backend.

    .venv/bin/python -m simulations.bench_store [--entities 200] [--rounds 3] [--seconds 2]
                                                [--only activation|append|compaction]

Activation = acquire(key) + load(key) of an entity holding a ~2 KB snapshot and 10 tail records
(the runtime's first-message path). Rows: SQLite (file in a temp dir), PostgreSQL, tiered with
a warm Redis (entries written through by write_snapshot/append), and tiered cold (cache flushed:
every load misses, reads PostgreSQL and refills). Append: one call in flight at a time, each a
batch of 1, 50 or 500 records of 100 bytes spread over distinct keys; every call is one commit,
so records/s grows with the batch while the commit rate stays bounded by the backend's fsync.
Redis alone is listed for reference only: it is not durable, it never acknowledges a change.
Compaction (SQLite, `--only compaction`): write_snapshot of an entity whose log holds 500 records of
300 B (the default snapshot_every), with secure_delete on (the default: deleted bytes are zeroed,
docs/data-rights.md) and off, back to back; then erase() + purge() of each entity.

Uses its own SQLite file, table prefix and key prefix, and removes them afterwards. Servers:
SYNCOPATE_BENCH_POSTGRES_DSN / SYNCOPATE_BENCH_REDIS_URL (default: the local ones).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

from redis.exceptions import RedisError

from protocols.errors import SyncopateError
from storage.base import Append, Record, Snapshot, Store
from storage.postgres import PostgresStore
from storage.redis import RedisStore
from storage.sqlite import SQLiteStore
from storage.tiered import TieredStore

PG_DSN = os.environ.get("SYNCOPATE_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNCOPATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SNAPSHOT = os.urandom(2048)
RECORD = os.urandom(100)


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


async def seed(store: Store, keys: list[str]) -> None:
    for key in keys:
        e = await store.acquire(key)
        await store.append([Append(key, e, [Record(s, RECORD) for s in range(1, 11)])])
        await store.write_snapshot(key, e, Snapshot(10, SNAPSHOT))
        await store.append([Append(key, e, [Record(s, RECORD) for s in range(11, 21)])])


async def activation(store: Store, keys: list[str], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        for key in keys:
            t = time.perf_counter()
            await store.acquire(key)
            loaded = await store.load(key)
            out.append((time.perf_counter() - t) * 1000)
            assert loaded.snapshot is not None and len(loaded.records) == 10
    return out


async def appends(store: Store, batch_size: int, seconds: float) -> tuple[float, float, float, float]:
    keys = [f"w{batch_size}-{i}" for i in range(max(batch_size, 50))]
    epochs = {k: await store.acquire(k) for k in keys}
    seqs = dict.fromkeys(keys, 0)
    lat, n, i = [], 0, 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        batch = []
        for _ in range(batch_size):
            k = keys[i % len(keys)]
            i += 1
            seqs[k] += 1
            batch.append(Append(k, epochs[k], [Record(seqs[k], RECORD)]))
        t = time.perf_counter()
        res = await store.append(batch)
        lat.append((time.perf_counter() - t) * 1000)
        assert res == [None] * batch_size
        n += batch_size
    elapsed = time.perf_counter() - start
    return n / elapsed, len(lat) / elapsed, pct(lat, 0.5), pct(lat, 0.99)


async def compactions(store: SQLiteStore, n: int) -> tuple[list[float], list[float]]:
    rec = os.urandom(300)
    snap, erase = [], []
    keys = [f"c{i}" for i in range(n)]
    epochs = {}
    for k in keys:
        epochs[k] = await store.acquire(k)
        await store.append([Append(k, epochs[k], [Record(s, rec) for s in range(1, 501)])])
    for k in keys:
        t = time.perf_counter()
        await store.write_snapshot(k, epochs[k], Snapshot(500, SNAPSHOT))
        snap.append((time.perf_counter() - t) * 1000)
    for k in keys:
        t = time.perf_counter()
        await store.erase(k, epochs[k])
        await store.purge()
        erase.append((time.perf_counter() - t) * 1000)
    return snap, erase


async def compaction_main(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="syncopate-bench-") as tmp:
        for secure in (True, False):
            store = SQLiteStore(Path(tmp) / f"compact-{secure}.db", secure_delete=secure)
            await store.start()
            try:
                snap, erase = await compactions(store, args.entities)
            finally:
                await store.close()
            rows.append((f"secure_delete={'on' if secure else 'off'}", len(snap), snap, erase))
    print(f"\nSQLite compaction: write_snapshot dropping 500 records of 300 B ({args.entities} entities), "
          "then erase + purge of each\n")
    print("| mode | entities | snapshot p50 ms | snapshot p99 ms | erase+purge p50 ms | erase+purge p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, snap, erase in rows:
        print(f"| {label} | {n} | {pct(snap, 0.5):.2f} | {pct(snap, 0.99):.2f} | {pct(erase, 0.5):.2f} | "
              f"{pct(erase, 0.99):.2f} |")


async def main(args) -> None:
    if args.only == "compaction":
        await compaction_main(args)
        return
    tag = f"bench{uuid.uuid4().hex[:10]}_"
    tmp = tempfile.TemporaryDirectory(prefix="syncopate-bench-")
    keys = [f"e{i}" for i in range(args.entities)]
    pg = PostgresStore(PG_DSN, prefix=tag)
    redis = RedisStore(REDIS_URL, prefix=tag)
    stores: dict[str, Store] = {
        "sqlite": SQLiteStore(Path(tmp.name) / "bench.db"),
        "postgres": pg,
        "tiered": TieredStore(PostgresStore(PG_DSN, prefix=tag + "t_"), RedisStore(REDIS_URL, prefix=tag + "t_")),
        "redis (not durable)": RedisStore(REDIS_URL, prefix=tag + "r_"),
    }
    act_rows, app_rows = [], []
    try:
        for s in stores.values():
            await s.start()
        for name in ("sqlite", "postgres", "tiered") if args.only != "append" else ():
            s = stores[name]
            await seed(s, keys)
            await activation(s, keys[:20], 1)            # warm connections and statement caches
            lat = await activation(s, keys, args.rounds)
            label = "tiered (warm Redis)" if name == "tiered" else name
            act_rows.append((label, len(lat), pct(lat, 0.5), pct(lat, 0.99)))
            if name == "tiered":
                cold = []
                for _ in range(args.rounds):
                    await RedisStore(REDIS_URL, prefix=tag + "t_", client=redis.client).drop()
                    cold += await activation(s, keys, 1)
                act_rows.append(("tiered (cold Redis)", len(cold), pct(cold, 0.5), pct(cold, 0.99)))
        for name, s in stores.items() if args.only != "activation" else ():
            for size in (1, 50, 500):
                app_rows.append((name, size, *await appends(s, size, args.seconds)))
    finally:
        for s in stores.values():
            for dropper in (getattr(s, "pg", None), getattr(s, "cache", None), s):
                if dropper is not None and hasattr(dropper, "drop"):
                    try:
                        await dropper.drop()
                    except (SyncopateError, RedisError, OSError) as exc:
                        print(f"cleanup of {s.name}: {exc}")
            await s.close()
        await redis.drop()
        await redis.close()
        tmp.cleanup()

    if act_rows:
        print(f"\nActivation: acquire + load of an entity with a {len(SNAPSHOT)} B snapshot + 10 records "
              f"({args.entities} entities x {args.rounds} rounds, sequential)\n")
        print("| store | samples | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|")
        for label, n, p50, p99 in act_rows:
            print(f"| {label} | {n} | {p50:.2f} | {p99:.2f} |")
    if not app_rows:
        return
    print(f"\nAppend: one call in flight, batches of {len(RECORD)} B records over distinct keys, "
          f"{args.seconds:g} s each\n")
    print("| store | batch | records/s | commits/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, size, rps, cps, p50, p99 in app_rows:
        print(f"| {name} | {size} | {rps:,.0f} | {cps:,.0f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--only", choices=["activation", "append", "compaction"])
    asyncio.run(main(ap.parse_args()))
