"""Asks: a read of another entity that the host makes for an op, before the entity handles it.

An entity does no I/O, but some ops need what another entity holds: the device group's `play` of a
playlist context needs the playlist's entries, and only the playlist entity may decide who can read
them; a playback command of a group that does not know its user's market yet needs the account's
country. The op declares its asks (`@op("play", ask=(market_ask, play_context_ask))`,
actors/entity.py). An ask is a pure function `ask(entity, cmd)` of the entity's state and the
command that names the read, or None when this command needs none; an op's asks are made one after
the other, each answer under its own name (`Ask.into`) in `cmd.asked`. The host then:

  1. builds the read (`Ask.cmd`), with the *commanding user's* principal, so the target entity
     applies its own rules (a private playlist the user can't read is NOT_FOUND, as for any read);
  2. sends it on the same route as effects between entities (`dispatch`: this host or a peer,
     actors/ray_host.py, actors/local.py), and waits for the target's released answer;
  3. on an answer, puts it in `cmd.asked[ask.into]` and queues the command for its entity again
     (where the next ask of the op, if any, is made the same way): the op runs with the answers in
     its command, as a pure function of them;
  4. on a refusal, answers the command with it (NOT_FOUND is named after what was asked for) and the
     command changes nothing.

The command does not hold its entity's mailbox while the ask is out (other commands of the entity
are handled meanwhile), exactly as when the gateway made the read before sending the command. A
retry of a command already applied is answered from the op cache before any ask (actors/host.py).
`cmd.asked` is never carried by the wire (protocols/wire.py): only a host sets it.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from actors.entity import Command, OpSpec
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply

log = logging.getLogger("syncopate.host")

Sink = Callable[[Reply], None]
Route = Callable[[Command], "Awaitable[Reply | None] | None"]


@dataclass(frozen=True)
class Ask:
    """One read of another entity: `cmd` (a read op, the asker's principal), what a NOT_FOUND
    answer names ("playlist <id>"), and the name of its answer in `cmd.asked`."""
    cmd: Command
    names: str
    into: str


def ask_for(entity, spec: OpSpec | None, cmd: Command) -> Ask | None:
    """The next ask this command needs before its op runs, or None (no ask declared, none needed, or
    all answered). Raises the SyncopateError of a command whose ask can't be formed (a malformed
    uri): a refusal like any other."""
    if spec is None or spec.ask is None or not isinstance(cmd.args, dict):
        return None
    answered = cmd.asked or {}
    # every ask formed first: a command one of them refuses (a malformed uri) is refused before any read
    asks = [fn(entity, cmd) for fn in (spec.ask if isinstance(spec.ask, tuple) else (spec.ask,))]
    return next((a for a in asks if a is not None and a.into not in answered), None)


class Asks:
    """The host's asks in flight: route each one, then hand the command back to the host."""

    def __init__(self, route: Route, requeue: Callable[[Command, Sink], None],
                 spawn: Callable[[Awaitable], asyncio.Task], metrics) -> None:
        self._route, self._requeue, self._spawn, self.metrics = route, requeue, spawn, metrics

    def start(self, ask: Ask, cmd: Command, sink: Sink, done: Callable[[], None]) -> None:
        """Make `ask` for `cmd`; then requeue `cmd` with the answer, or answer `sink` with the
        refusal. `done()` runs once either way (before the requeue)."""
        self.metrics.asks_sent += 1
        self._spawn(self._run(ask, cmd, sink, done))

    async def _run(self, ask: Ask, cmd: Command, sink: Sink, done: Callable[[], None]) -> None:
        try:
            reply = await self._answer(ask)
        except asyncio.CancelledError:
            # The host is closing: the command was not handled; the sender may retry it elsewhere.
            done()
            sink(Reply.fail(SyncopateError(ErrorCode.HOST_UNAVAILABLE, "the host closed during the command; retry")))
            raise
        done()
        if reply.error is not None:
            self.metrics.asks_refused += 1
            err = reply.error
            if err.code == ErrorCode.NOT_FOUND:
                err = SyncopateError(ErrorCode.NOT_FOUND, f"{ask.names} not found")
            sink(Reply.fail(err))
            return
        cmd.asked = {**(cmd.asked or {}), ask.into: reply.payload if reply.payload is not None else {}}
        self._requeue(cmd, sink)

    async def _answer(self, ask: Ask) -> Reply:
        try:
            res = self._route(ask.cmd)
            # The one await of an ask: the target's host answers once the read is released (after
            # its output gate). Nothing of the asking entity is held meanwhile.
            reply = await res if res is not None else None
        except SyncopateError as err:
            return Reply.fail(err)
        except Exception as exc:
            log.warning("ask %s on %s failed: %s", ask.cmd.op, ask.cmd.key, exc)
            return Reply.fail(SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{ask.names} is unreachable; retry"))
        if not isinstance(reply, Reply):
            # A route that takes commands over without answering (a test's fire-and-forget effects)
            # can't carry an ask: refuse clearly rather than run the op without what it asked for.
            return Reply.fail(SyncopateError(ErrorCode.INTERNAL, f"no route answers asks for {ask.cmd.key}"))
        return reply
