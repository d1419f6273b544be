"""The events consumer alone: how fast it drains a backlog (events applied per second), and the
CPU time it spends per event. No server, no HTTP: the entries are appended to the bus first, then
one Consumer applies them batch by batch (read, one counts transaction, ack), as `serve` runs it.

    python -m simulations.bench_consumer [--events 20000] [--rounds 3] [--redis-url URL --postgres-dsn DSN]

Each round uses a fresh data dir (SQLite log and counts: `synchronous=FULL`, as served) and prints
events/s and CPU ms per 1,000 events (the process's, i.e. the consumer and its SQLite threads).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

from protocols.listening import ListeningEvent
from syncopate.events.consumer import Consumer
from syncopate.events.service import LocalEvents

DAY0 = 1_767_225_600_000


def events(n: int, users: int = 200) -> list[dict]:
    out = []
    for i in range(n):
        u, at = f"u{i % users}", DAY0 + i * 1000
        out.append(ListeningEvent(u, f"e{i}", f"{u}/{at}/e{i}", "phone", f"spotify:track:{i % 500:022d}", None, at,
                                  60_000, at + 60_000, "premium", "SE", False, True, "upload", at).to_wire())
    return out


async def one(args) -> tuple[float, float]:
    data = tempfile.mkdtemp(prefix="bench-consumer-")
    ev = await LocalEvents(data, args.redis_url, args.postgres_dsn, f"bc{uuid.uuid4().hex[:8]}_", consume=False).start()
    try:
        evs = events(args.events)
        for i in range(0, len(evs), 50):             # as uploads append them: 50 a call
            await ev.bus.publish(evs[i:i + 50])
        c = Consumer(ev.bus, ev.counts, "bench", block_ms=10)
        t0, c0 = time.perf_counter(), time.process_time()
        await c.drain(timeout=600)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert c.streams == args.events, (c.streams, args.events)
        return args.events / wall, cpu * 1000 / (args.events / 1000)
    finally:
        await ev.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--postgres-dsn", default=None)
    args = ap.parse_args(argv)
    for r in range(args.rounds):
        rate, cpu = asyncio.run(one(args))
        print(f"round {r + 1}: {args.events} events drained at {rate:.0f} events/s, {cpu:.1f} CPU ms per 1,000 events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
