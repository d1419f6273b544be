"""EntityDriver: one entity on the real EntityHost over the memory store, driven synchronously.

The entity tests used to carry their own copies of the host (bump the version when an outcome has
records, keep the records as the log, collect events and effects). Those copies could drift from
actors/host.py; here the host itself runs every command, so versions, op ids, the output gate,
phantoms, ticks and the committed log entries are the host's.

What a test sees of one command (`Result`):
  reply, version   what host.call answered
  records          the records of the log entry this command committed (what the host appended
                   to the store), [] when it committed nothing
  events           the Pushes the host delivered for it (to any gateway), in order
  effects          the Commands the host dispatched for it (acknowledged at once)

Asks (actors/asks.py: an op's read of another entity, made by the host before the op runs) are
answered from what the test serves: `serve(kind, entity_id, op, payload)` (or a SyncopateError to
refuse). The host routes asks the way it routes effects; a served (kind, id, op) is answered, and
the asks a test made are in `asked`. The account entity is not in the driver: the device group's
ask of its user's market (`account:<id> market`, actors/devicegroup_market.py) is answered, unless
served otherwise, as the account entity answers for a user without an account (ACCOUNTLESS).

Pushes reach only gateways that subscribed: the driver subscribes a watcher connection of its own
(`WATCH`) with a real `subscribe` command (SYSTEM principal) as soon as the entity accepts one (a
playlist only once it exists: like any subscriber, the watcher sees nothing of `create`).
Pushes addressed to one connection go to that connection's gateway whether it subscribed or not.

Time: the host's clock is the driver's `now` (ms; a Fraction so `int(clock() * 1000)` is exact).
Nothing happens on wall-clock time: ticks run only when the test calls `tick()` (the host's
housekeeping sweep never ticks or passivates on its own), so a test is deterministic.

The host runs on an event loop owned by the driver; each call runs the loop until the host answers.
`close()` stops the host and the loop; `close_all()` (an autouse fixture in tests/conftest.py) closes
every driver a test left open.
"""
from __future__ import annotations

import asyncio
import math
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import msgpack

from actors.entity import SYSTEM, Command, Entity, Env, Principal
from actors.host import EntityHost
from protocols.errors import SyncopateError
from protocols.wire import ConnAddress, Push, Reply
from storage.memory import MemoryStore

_NOT_SERVED = object()
ACCOUNTLESS = {"country": "US", "explicit_filter": False, "as_of": 0}        # actors/account.py `market` of a user without an account
WATCH = ConnAddress("driver-watch", "watcher")      # the driver's own subscriber
BARRIER = ConnAddress("driver-barrier", "none")     # never subscribed: unsubscribing it is a no-op


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass
class Result:
    """What one command did, as the host released it."""
    reply: Any = None
    version: int = 0
    records: list = field(default_factory=list)
    events: list[Push] = field(default_factory=list)
    effects: list[Command] = field(default_factory=list)


class RecordingStore(MemoryStore):
    """The memory store, keeping every log entry it committed in order (a snapshot trims the store's
    own records; this keeps the whole history for replay checks)."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: dict[str, list[tuple[int, bytes]]] = {}

    async def append(self, batch):
        results = await super().append(batch)
        for item, res in zip(batch, results):
            if res is None:
                self.committed.setdefault(item.key, []).extend((r.seq, bytes(r.data)) for r in item.records)
        return results


class _Host(EntityHost):
    """The real host; its ticks run only when the driver asks (see the module docstring)."""
    ticking = False

    def run_ticks(self, now: float | None = None) -> None:
        if self.ticking:
            super().run_ticks(now)


_open: "weakref.WeakSet[EntityDriver]" = weakref.WeakSet()


def close_all() -> None:
    for d in list(_open):
        d.close()


class OnDriver:
    """What every entity harness of the tests shares over its driver `self.d`: the live entity and
    the clock (ms)."""
    d: "EntityDriver"

    @property
    def e(self) -> Entity:
        return self.d.e

    @property
    def now(self) -> int:
        return self.d.now

    @now.setter
    def now(self, ms: int) -> None:
        self.d.now = ms


class EntityDriver:
    def __init__(self, cls: type[Entity], entity_id: str, env: Env, *, now_ms: int,
                 store: RecordingStore | None = None) -> None:
        self.cls, self.id, self.env = cls, entity_id, env
        self.kind = cls.kind
        self.key = f"{self.kind}:{entity_id}"
        self.now = now_ms
        self.store = store if store is not None else RecordingStore()
        self.pushes: list[Push] = []          # every push delivered, in order, once each
        self.effects: list[Command] = []      # every effect dispatched, in order
        self.served: dict[tuple[str, str, str], Any] = {}   # (kind, id, op) -> answer to an ask
        self.asked: list[Command] = []        # every ask the host made, in order
        self.e: Entity | None = None          # the entity the host activated last (see _make)
        # id -> the push: holding it keeps its id from being reused by a later push (a test may clear
        # `pushes`), and one push delivered to several gateways is kept once
        self._seen: dict[int, Push] = {}
        self._loop = asyncio.new_event_loop()
        self.host: _Host | None = None
        self._watching = False
        self._boot()
        _open.add(self)

    # -- the host -------------------------------------------------------------------------------
    def _clock(self) -> Fraction:
        return Fraction(self.now, 1000)

    def _make(self, entity_id: str, env: Env) -> Entity:
        """The host's constructor for this kind: the instance it creates is the live entity."""
        self.e = self.cls(entity_id, env)
        return self.e

    def _deliver(self, gateway: str, items: list) -> None:
        for it in items:
            if isinstance(it, Push) and id(it) not in self._seen:
                self._seen[id(it)] = it
                self.pushes.append(it)

    def serve(self, kind: str, entity_id: str, op: str, answer: Any) -> None:
        """Answer the host's asks of (kind, entity_id, op) with `answer` (a SyncopateError refuses)."""
        self.served[(kind, entity_id, op)] = answer

    def _dispatch(self, cmd: Command):
        answer = self.served.get((cmd.kind, cmd.entity_id, cmd.op), _NOT_SERVED)
        if answer is _NOT_SERVED and (cmd.kind, cmd.op) == ("account", "market"):
            answer = ACCOUNTLESS
        if answer is not _NOT_SERVED:
            self.asked.append(cmd)
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(Reply.fail(answer) if isinstance(answer, SyncopateError) else Reply(1, answer))
            return fut
        self.effects.append(cmd)
        return None                           # taken over: the host counts it acknowledged

    def _boot(self) -> None:
        self.host = _Host("driver", self.store, {self.kind: self._make}, self.env, deliver=self._deliver,
                          dispatch=self._dispatch, clock=self._clock, idle_timeout_s=math.inf)
        self._watching = False
        self._tick_horizon = 0.0
        self._seen.clear()
        self._run(self.host.start())
        self.e = self.cls(self.id, self.env)  # what an activation would give: nothing stored yet
        if self.store.committed.get(self.key):
            self._run(self._barrier_activating())

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.host.close(passivate=False))
        self._loop.close()
        _open.discard(self)

    def restart(self) -> None:
        """The host dies (nothing is snapshotted) and a new one activates the entity from the store."""
        self._run(self.host.close(passivate=False))
        self._boot()

    async def _barrier_activating(self) -> None:
        # activation happens on any message; a user-visible read would change soft state, so
        # re-subscribe the watcher (which is what a real gateway does after a host restart)
        await self._watch()

    async def _watch(self) -> None:
        if self._watching:
            return
        try:
            await self.host.call(Command(self.kind, self.id, "subscribe", {}, SYSTEM, origin=WATCH))
            self._watching = True
        except SyncopateError:
            pass                              # e.g. a playlist that does not exist yet

    # -- commands ---------------------------------------------------------------------------------
    def _mark(self) -> tuple[int, int, int]:
        return len(self.pushes), len(self.effects), len(self.store.committed.get(self.key, ()))

    def _since(self, mark, reply=None, version=0) -> Result:
        p, f, c = mark
        entries = self.store.committed.get(self.key, [])[c:]
        records = [r for _, data in entries for r in unpack(data)["recs"]]
        return Result(reply, version, records, self.pushes[p:], self.effects[f:])

    def command(self, op: str, args: dict | None = None, *, principal: Principal = SYSTEM,
                origin: tuple[str, str] | None = None, op_id: str | None = None,
                follow: bool = False) -> Result:
        """Run one command on the host; raises the SyncopateError it answers with."""
        cmd = Command(self.kind, self.id, op, dict(args or {}), principal, op_id=op_id,
                      origin=ConnAddress(*origin) if origin is not None else None, follow=follow)

        async def go():
            await self._watch()
            mark = self._mark()
            payload, version = await self.host.call(cmd)
            res = self._since(mark, payload, version)
            await self._watch()
            return res
        return self._run(go())

    def tick(self) -> Result | None:
        """One tick of the entity at `now`, as the host's housekeeping runs it; None when it did
        nothing (no records, no pushes)."""
        async def go():
            await self._watch()
            mark = self._mark()
            self.host.ticking = True
            try:
                # due now whatever the host's schedule (the test says when a tick happens): the
                # schedule's `now` only moves forward, one and a half tick periods past the last one
                # it was given (so every deadline it set is due, float rounding included)
                period = (self.cls.tick_ms or 1) / 1000
                self._tick_horizon = max(float(self._clock()), self._tick_horizon) + 1.5 * period
                self.host.run_ticks(self._tick_horizon)
            finally:
                self.host.ticking = False
            # in mailbox order after the tick, handled by the host itself: its answer is released
            # after everything the tick released
            await self.host.call(Command(self.kind, self.id, "unsubscribe", {}, SYSTEM, origin=BARRIER))
            res = self._since(mark, None, self.e.version)
            return res if (res.records or res.events) else None
        return self._run(go())

    def snapshot(self) -> tuple[Any, int]:
        """Write the entity's snapshot now, as the host's compaction does (the store then drops the
        records it covers); answers (the state written, as the store gives it back, its version)."""
        async def go():
            slot = self.host.slots.get(self.key)
            assert slot is not None and slot.entity is not None, f"{self.key} is not active"
            assert await self.host._snapshot(slot), f"the snapshot of {self.key} was not written"
            loaded = await self.store.load(self.key)
            return unpack(loaded.snapshot.data)["state"], loaded.snapshot.seq
        return self._run(go())

    # -- the committed log --------------------------------------------------------------------------
    def entries(self) -> list[tuple[int, list]]:
        """Every log entry the host committed for this entity: (version, records), oldest first."""
        return [(seq, unpack(data)["recs"]) for seq, data in self.store.committed.get(self.key, [])]

    def replayed(self, base: Any = None, base_version: int = 0,
                 entries: list[tuple[int, list]] | None = None) -> Entity:
        """A fresh entity restored from `base` (a snapshot, or nothing) plus the committed records after
        `base_version`: the determinism the host's activation relies on."""
        e = self.cls(self.id, self.env)
        if base is not None:
            e.restore(unpack(msgpack.packb(base, use_bin_type=True)))
            e.version = base_version
        for v, recs in (entries if entries is not None else self.entries()):
            if v > base_version:
                for r in recs:
                    e.apply(r)
                e.version = v
        return e
