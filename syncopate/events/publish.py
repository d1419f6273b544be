"""Where the host's outbox meets the event bus.

A device group that accepts listening events returns one effect, `eventbus:<user> publish {events}`
(actors/devicegroup_events.py). The host commits it inside the log entry with the events (the
durable outbox, actors/host.py) and then dispatches it; `with_events` wraps the host's dispatch so
that effects of kind EVENTBUS are appended to the bus instead of going to an entity. The Reply
resolves once the append returned (SQLite committed / Redis answered XADD); only then does the
outbox drop the effect (and a later log entry carries the acknowledgement). A failed append is a
retryable failure: the outbox re-sends with backoff, and a host that died before the ack re-sends
from its log on re-activation. Either way an entry may be appended twice; the consumer applies an
event once by its key.
"""
from __future__ import annotations

import asyncio
import logging

from actors.devicegroup_events import EVENTBUS, PUBLISH
from actors.entity import Command
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply

log = logging.getLogger("syncopate.events")


class Publisher:
    def __init__(self, bus) -> None:
        self.bus = bus
        self.published = 0

    async def publish(self, cmd: Command) -> Reply:
        events = cmd.args.get("events")
        if cmd.op != PUBLISH or not isinstance(events, list):
            # Not ours to retry: a malformed effect would be refused forever.
            return Reply.fail(SyncopateError(ErrorCode.BAD_REQUEST, f"eventbus has no op {cmd.op!r}"))
        try:
            await self.bus.publish(events)
        except Exception as exc:
            log.warning("publishing %d listening events failed (%s); the outbox retries", len(events), exc)
            return Reply.fail(SyncopateError(ErrorCode.STORE_UNAVAILABLE, f"event bus: {exc}"))
        self.published += len(events)
        return Reply()

    def wrap(self, dispatch):
        """The host's dispatch, with EVENTBUS effects going to the bus."""
        def out(cmd: Command):
            if cmd.kind == EVENTBUS:
                return asyncio.ensure_future(self.publish(cmd))
            return dispatch(cmd)
        return out
