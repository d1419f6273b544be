"""`syncopate events reconcile`: the counts against a recount from the durable record.

The record is the consumer's table of applied events (syncopate/events/counts.py `ev_events`, one
row per event key). The recount is the number of distinct plays with a stream event per (track,
day); the maintained counts are `ev_counts`. They agree unless a count was changed without its
marker (or twice for one play): the difference is what the report lists, and the command exits 1.
Entries still on the bus (delivered and not acknowledged, or never delivered) are reported beside
it: they are not differences, the consumer has not applied them yet.
"""
from __future__ import annotations

from syncopate.events.bus import make_log
from syncopate.events.counts import make_counts


async def reconcile(data_dir: str, redis_url: str | None = None, postgres_dsn: str | None = None,
                    prefix: str = "syncopate_", *, bus=None, counts=None) -> dict:
    own_bus, own_counts = bus is None, counts is None
    bus = bus or make_log(data_dir, redis_url, prefix)
    counts = counts or make_counts(data_dir, postgres_dsn, prefix)
    try:
        if own_bus:
            await bus.start()
        if own_counts:
            await counts.start()
        rec = await counts.reconcile()
        return {**rec.to_dict(), "events": await counts.event_count(), "pending": await bus.pending(),
                "backlog": await bus.backlog()}
    finally:
        if own_bus:
            await bus.close()
        if own_counts:
            await counts.close()
