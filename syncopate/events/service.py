"""The events consumer as `syncopate serve` runs it: a Ray actor (EventsActor) holding the bus, the
counts store and one Consumer task; Ray restarts it if it dies (max_restarts=-1), and the new
incarnation claims what the dead one left pending after CLAIM_IDLE_MS. `LocalEvents` is the same
in the calling event loop (LocalServer, tests, the benchmark).
"""
from __future__ import annotations

import asyncio
import logging
import uuid

import ray

from syncopate.events.bus import make_log
from syncopate.events.consumer import Consumer
from syncopate.events.counts import make_counts

log = logging.getLogger("syncopate.events")


class LocalEvents:
    def __init__(self, data_dir: str, redis_url: str | None = None, postgres_dsn: str | None = None,
                 prefix: str = "syncopate_", *, consume: bool = True, **consumer_kw) -> None:
        self.bus = make_log(data_dir, redis_url, prefix)
        self.counts = make_counts(data_dir, postgres_dsn, prefix)
        # a name per incarnation: a restarted consumer claims its predecessor's pending entries
        self.consumer = Consumer(self.bus, self.counts, f"c-{uuid.uuid4().hex[:8]}", **consumer_kw)
        self.consume = consume
        self._task: asyncio.Task | None = None

    async def start(self) -> LocalEvents:
        await self.bus.start()
        await self.counts.start()
        if self.consume:
            self._task = asyncio.create_task(self.consumer.run(), name="events-consumer")
        return self

    async def close(self) -> None:
        self.consumer.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.bus.close()
        await self.counts.close()


@ray.remote
class EventsActor:
    def __init__(self, spec: dict) -> None:
        from syncopate.logs import setup_logging
        setup_logging(spec.get("log_level", "INFO"), "events")
        self.spec = spec
        self.events: LocalEvents | None = None
        self._starting: asyncio.Future | None = None

    async def ready(self) -> str:
        if self._starting is None:
            s = self.spec
            self._starting = asyncio.ensure_future(
                LocalEvents(s["data_dir"], s.get("redis_url"), s.get("postgres_dsn"), s.get("prefix", "syncopate_")).start())
        self.events = await asyncio.shield(self._starting)
        return self.events.consumer.name

    async def stats(self) -> dict:
        await self.ready()
        c = self.events.consumer
        return {"consumer": c.name, "applied": c.applied, "streams": c.streams, "duplicates": c.duplicates,
                "redelivered": c.redelivered, "pending": await self.events.bus.pending(),
                "backlog": await self.events.bus.backlog()}

    async def shutdown(self) -> None:
        if self.events is not None:
            await self.events.close()
