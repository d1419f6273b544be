"""EntityHost: owns many entities in one event loop, and is the only place they are written from.

Where a command goes (the whole write path is in this file):

  enqueue(cmd)  ->  per-entity mailbox  ->  activate on first message (store.acquire + store.load)
                ->  entity.handle(cmd)   ->  pending list (records not yet durable)
  committer     ->  store.append(batch)  (ONE transaction for everything pending: group commit)
                ->  release, in order: replies, pushes to interested gateways, effects

Output gate (as Cloudflare's Durable Objects do it): the entity changes its in-memory state when
it handles a command, but nothing derived from that state — a reply, a push, an effect, even a
read's reply — leaves the host before the records it depends on are committed. If a commit fails,
the entity's in-memory state is ahead of the store, so the entity is evicted and every pending
outcome of it fails with a retryable error; the next message re-activates it from the store.
Clients retry with the same op id, and the op id travels inside the log entry, so a retry of an
operation that did commit (the answer was lost, the host died) is answered from the log, not
applied twice.

Rejected alternative: await the commit inside handle() per command. That caps an entity at one
command per fsync and makes concurrent commands on one entity interleave at the await; pipelining
behind an output gate keeps the entity single-threaded and lets one fsync cover everything.

No Ray and no aiohttp here: actors/ray_host.py adapts this class to a Ray actor; tests and the
in-process scale model use it directly.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from actors.entity import Command, Entity, Env, Event, Outcome
from protocols.errors import ErrorCode, SyncopateError
from storage.base import Append, Record, Snapshot, Store

log = logging.getLogger("syncopate.host")

# A reply sink receives (ok, payload, version); payload is the reply or a SyncopateError.
Sink = Callable[[bool, Any, int], None]
TICK = "__tick__"
UNSUBSCRIBE = "unsubscribe"
RELAY = "relay"                # system op: push {type, payload} to the entity's subscribers, store nothing
OPS_REMEMBERED = 1024          # op ids remembered per entity for idempotent retries


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass
class Slot:
    """One activated (or activating) entity."""
    key: str
    kind: str
    entity_id: str
    entity: Entity | None = None
    epoch: int = 0
    mailbox: deque = field(default_factory=deque)
    draining: bool = False
    dead: bool = False                   # evicted: in-memory state may be ahead of the store
    ops: OrderedDict = field(default_factory=OrderedDict)   # op_id -> (version, reply)
    committed: int = 0                   # last version known durable
    snapshot_seq: int = 0
    last_used: float = 0.0
    next_tick: float = 0.0
    inflight: int = 0                    # outcomes handled but not yet released
    snapshotting: bool = False


@dataclass
class Pending:
    slot: Slot
    sink: Sink
    ok: bool
    reply: Any
    version: int
    entry: bytes | None = None           # the log entry to commit (None: nothing to persist)
    pushes: list = field(default_factory=list)       # (gateway_id, item)
    effects: list = field(default_factory=list)


class Metrics:
    """Counters the adapters export (prometheus in the Ray host; plain numbers in tests)."""

    def __init__(self) -> None:
        self.commands = 0
        self.activations = 0
        self.passivations = 0
        self.commits = 0
        self.committed_entries = 0
        self.commit_seconds = 0.0
        self.activation_seconds = 0.0
        self.errors: dict[str, int] = {}

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class EntityHost:
    def __init__(self, host_id: str, store: Store, kinds: dict[str, type[Entity]], env: Env, *,
                 deliver: Callable[[str, list], None] | None = None,
                 dispatch: Callable[[Command], None] | None = None,
                 idle_timeout_s: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.host_id = host_id
        self.incarnation = uuid.uuid4().hex[:12]
        self.store = store
        self.kinds = kinds
        self.env = env
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._deliver = deliver or (lambda gw, items: None)
        self._dispatch = dispatch or (lambda cmd: None)
        self.slots: dict[str, Slot] = {}
        self.interest: dict[str, set[str]] = {}       # entity key -> gateway ids with subscribers
        self._pending: list[Pending] = []
        self._ticks: list[tuple[float, str, int]] = []     # (due, entity key, slot identity)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.metrics = Metrics()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._committer(), name=f"{self.host_id}-committer"),
                       asyncio.create_task(self._housekeeping(), name=f"{self.host_id}-housekeeping")]

    async def close(self, *, passivate: bool = True) -> None:
        """Stop; with passivate, snapshot every entity first (a clean shutdown)."""
        if passivate:
            await self.drain()
            for slot in list(self.slots.values()):
                await self._passivate(slot)
        self._closed = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every handled command is released (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending or any(s.inflight or s.mailbox or s.draining for s in self.slots.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("host did not drain")
            await asyncio.sleep(0.001)

    # -- entry points ------------------------------------------------------------------------
    def enqueue(self, cmd: Command, sink: Sink) -> None:
        """Queue a command for its entity. Never blocks; the sink is called exactly once."""
        if cmd.op == UNSUBSCRIBE and cmd.origin:
            self.interest.get(cmd.key, set()).discard(cmd.origin[0])
            sink(True, None, 0)
            return
        if cmd.kind not in self.kinds:
            sink(False, SyncopateError(ErrorCode.NOT_FOUND, f"no entity kind {cmd.kind!r}"), 0)
            return
        slot = self.slots.get(cmd.key)
        if slot is None:
            slot = self.slots[cmd.key] = Slot(cmd.key, cmd.kind, cmd.entity_id)
        slot.mailbox.append((cmd, sink))
        slot.last_used = self.clock()
        if not slot.draining:
            slot.draining = True
            asyncio.get_running_loop().create_task(self._drain(slot))

    async def call(self, cmd: Command) -> tuple[Any, int]:
        """Run one command and wait for its released answer: (reply, version)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        def sink(ok: bool, payload: Any, version: int) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result((payload, version))
            else:
                fut.set_exception(payload)

        self.enqueue(cmd, sink)
        return await fut

    def submit(self, gateway_id: str, requests: list[tuple[Any, Command]]) -> None:
        """A gateway's batch: each answer goes back to that gateway as ("r", token, ok, payload, version)."""
        for token, cmd in requests:
            self.enqueue(cmd, self._gateway_sink(gateway_id, token))

    def _gateway_sink(self, gateway_id: str, token: Any) -> Sink:
        def sink(ok: bool, payload: Any, version: int) -> None:
            self._deliver(gateway_id, [("r", token, ok, payload, version)])
        return sink

    def forget_gateway(self, gateway_id: str) -> None:
        for gws in self.interest.values():
            gws.discard(gateway_id)

    # -- the per-entity mailbox ------------------------------------------------------------------
    async def _drain(self, slot: Slot) -> None:
        try:
            while slot.mailbox and not slot.dead:
                if slot.entity is None:
                    try:
                        await self._activate(slot)   # commands arriving meanwhile wait in the mailbox
                    except SyncopateError as err:
                        self._fail_mailbox(slot, err)
                        break
                    except Exception as exc:  # a corrupt record or snapshot: refuse, keep the host up
                        log.exception("activation of %s failed", slot.key)
                        self._fail_mailbox(slot, SyncopateError(ErrorCode.INTERNAL, f"activation failed: {exc}"))
                        break
                    continue
                cmd, sink = slot.mailbox.popleft()
                self._handle(slot, cmd, sink)
        finally:
            slot.draining = False
            if slot.dead:
                self._fail_mailbox(slot, SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{slot.key} was evicted; retry"))
            if slot.entity is None and not slot.mailbox and self.slots.get(slot.key) is slot and not slot.inflight:
                del self.slots[slot.key]

    def _fail_mailbox(self, slot: Slot, err: SyncopateError) -> None:
        while slot.mailbox:
            _, sink = slot.mailbox.popleft()
            sink(False, err, 0)
        if self.slots.get(slot.key) is slot and slot.entity is None:
            del self.slots[slot.key]

    async def _activate(self, slot: Slot) -> None:
        t0 = time.perf_counter()
        epoch = await self.store.acquire(slot.key)
        loaded = await self.store.load(slot.key)
        entity = self.kinds[slot.kind](slot.entity_id, self.env)
        if loaded.snapshot is not None:
            snap = unpack(loaded.snapshot.data)
            entity.restore(snap["state"])
            for op_id, version, reply in snap.get("ops", ()):
                slot.ops[op_id] = (version, reply)
            entity.version = loaded.snapshot.seq
        for rec in loaded.records:
            entry = unpack(rec.data)
            for r in entry["recs"]:
                entity.apply(r)
            entity.version = rec.seq
            if entry.get("op"):
                self._remember(slot, entry["op"], rec.seq, entry.get("reply"))
        slot.entity, slot.epoch = entity, epoch
        slot.committed = entity.version
        slot.snapshot_seq = loaded.snapshot.seq if loaded.snapshot else 0
        if entity.tick_ms:
            # Staggered by activation time; the heap hands out a few due ticks at a time.
            slot.next_tick = self.clock() + entity.tick_ms / 1000
            heapq.heappush(self._ticks, (slot.next_tick, slot.key, id(slot)))
        self.metrics.activations += 1
        self.metrics.activation_seconds += time.perf_counter() - t0

    def _remember(self, slot: Slot, op_id: str, version: int, reply: Any) -> None:
        slot.ops[op_id] = (version, reply)
        if len(slot.ops) > OPS_REMEMBERED:
            slot.ops.popitem(last=False)

    def _handle(self, slot: Slot, cmd: Command, sink: Sink) -> None:
        entity = slot.entity
        self.metrics.commands += 1
        if cmd.op_id and cmd.op_id in slot.ops:
            version, reply = slot.ops[cmd.op_id]
            self._queue(Pending(slot, sink, True, reply, version))
            return
        cmd.now_ms = int(self.clock() * 1000)
        try:
            if cmd.op == RELAY and cmd.principal.system:
                # Ephemeral state (Yjs awareness): ordered with the entity's own pushes, never stored.
                outcome = Outcome(events=[Event(str(cmd.args["type"]), cmd.args.get("payload"))])
            elif cmd.op == TICK:
                outcome = entity.tick(cmd.now_ms)
            else:
                outcome = entity.handle(cmd)
        except SyncopateError as err:
            self.metrics.errors[err.code.value] = self.metrics.errors.get(err.code.value, 0) + 1
            self._queue(Pending(slot, sink, False, err, entity.version))
            return
        except Exception as exc:
            # A bug, not a refusal: the entity may be half-changed, so drop it and reload from the store.
            log.exception("%s.%s failed", slot.key, cmd.op)
            self._evict(slot)
            sink(False, SyncopateError(ErrorCode.INTERNAL, f"{cmd.op} failed: {type(exc).__name__}"), 0)
            return
        if outcome is None:
            sink(True, None, entity.version)
            return
        entry = None
        if outcome.records:
            entity.version += 1
            entry = pack({"op": cmd.op_id, "recs": outcome.records, "reply": outcome.reply if cmd.op_id else None})
            if cmd.op_id:
                self._remember(slot, cmd.op_id, entity.version, outcome.reply)
        if (cmd.follow or cmd.op == "subscribe") and cmd.origin:
            self.interest.setdefault(slot.key, set()).add(cmd.origin[0])
        pushes = []
        fresh = entry is not None       # the push announces a new version (not re-sent state)
        for ev in outcome.events:
            item = ("e", slot.key, entity.version, ev.type, ev.payload, ev.to, ev.close, fresh)
            if ev.to and ev.to.startswith("conn:"):
                pushes.append((ev.to[5:].split("/", 1)[0], item))
            else:
                pushes.extend((gw, item) for gw in self.interest.get(slot.key, ()))
        effects = []
        for i, eff in enumerate(outcome.effects):
            if eff.op_id is None:
                eff.op_id = f"{slot.key}@{entity.version}.{cmd.op_id or cmd.now_ms}#{i}"
            effects.append(eff)
        self._queue(Pending(slot, sink, True, outcome.reply, entity.version, entry, pushes, effects))

    def _queue(self, p: Pending) -> None:
        p.slot.inflight += 1
        self._pending.append(p)
        self._wake.set()

    # -- group commit and release ---------------------------------------------------------------
    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)

    async def _commit(self, batch: list[Pending]) -> None:
        appends: dict[str, Append] = {}
        for p in batch:
            if p.entry is not None and not p.slot.dead:
                a = appends.get(p.slot.key)
                if a is None:
                    a = appends[p.slot.key] = Append(p.slot.key, p.slot.epoch, [])
                a.records.append(Record(p.version, p.entry))
        failed: dict[str, SyncopateError] = {}
        if appends:
            items = list(appends.values())
            t0 = time.perf_counter()
            try:
                # The one await of the write path. Commands keep arriving and being handled while
                # it runs; their outcomes wait in self._pending for the next batch.
                results = await self.store.append(items)
            except SyncopateError as err:
                results = [err] * len(items)
            except Exception as exc:
                log.exception("store append failed")
                results = [SyncopateError(ErrorCode.STORE_UNAVAILABLE, str(exc))] * len(items)
            self.metrics.commits += 1
            self.metrics.commit_seconds += time.perf_counter() - t0
            for a, res in zip(items, results):
                if res is None:
                    self.metrics.committed_entries += len(a.records)
                else:
                    failed[a.key] = res
        for p in batch:
            p.slot.inflight -= 1
            err = failed.get(p.slot.key)
            if err is None and p.slot.dead:
                err = SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{p.slot.key} was evicted; retry")
            if err is not None:
                self._evict(p.slot)
                p.sink(False, err, 0)
                continue
            if p.entry is not None:
                p.slot.committed = p.version
            p.sink(p.ok, p.reply, p.version)
            for gw, item in p.pushes:
                self._deliver(gw, [item])
            for eff in p.effects:
                self._dispatch(eff)
        for key in {p.slot.key for p in batch if p.entry is not None}:
            slot = self.slots.get(key)
            if slot and slot.entity and not slot.dead and not slot.snapshotting \
                    and slot.committed - slot.snapshot_seq >= slot.entity.snapshot_every:
                # Compaction runs beside the committer, never in front of the next commit.
                slot.snapshotting = True
                asyncio.get_running_loop().create_task(self._snapshot(slot))

    def _evict(self, slot: Slot) -> None:
        slot.dead = True
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]

    async def _snapshot(self, slot: Slot) -> bool:
        """Write a snapshot of the committed state. Only committed state may be snapshotted: when
        uncommitted outcomes are in flight the in-memory entity is ahead of the log, so wait for
        them (the snapshot would otherwise claim records that may still fail)."""
        try:
            while slot.committed != slot.entity.version and not slot.dead:
                await asyncio.sleep(0.001)
            if slot.dead:
                return False
            entity = slot.entity
            seq = entity.version
            data = pack({"state": entity.snapshot(),
                         "ops": [[op, v, r] for op, (v, r) in slot.ops.items()]})
            try:
                await self.store.write_snapshot(slot.key, slot.epoch, Snapshot(seq, data))
            except SyncopateError as err:
                if err.code == ErrorCode.STALE_EPOCH:
                    self._evict(slot)
                log.warning("snapshot of %s failed: %s", slot.key, err)
                return False
            slot.snapshot_seq = max(slot.snapshot_seq, seq)
            return True
        finally:
            slot.snapshotting = False

    # -- passivation and ticks -----------------------------------------------------------------------
    async def _passivate(self, slot: Slot) -> bool:
        if slot.entity is None or slot.mailbox or slot.inflight or slot.draining or slot.dead:
            return False
        if slot.committed > slot.snapshot_seq and not await self._snapshot(slot):
            return False
        if slot.mailbox or slot.inflight or slot.draining:   # a command arrived during the snapshot
            return False
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        self.metrics.passivations += 1
        return True

    async def passivate_idle(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        n = 0
        for slot in list(self.slots.values()):
            if slot.entity is not None and now - slot.last_used >= self.idle_timeout_s and slot.entity.idle():
                n += await self._passivate(slot)
        return n

    def run_ticks(self, now: float | None = None) -> None:
        """Queue a tick for every entity whose tick is due (a heap of deadlines: O(due), not O(active))."""
        now = self.clock() if now is None else now
        while self._ticks and self._ticks[0][0] <= now:
            _, key, sid = heapq.heappop(self._ticks)
            slot = self.slots.get(key)
            if slot is None or id(slot) != sid or slot.dead or slot.entity is None:
                continue                       # passivated or evicted since: its heap entry lapses
            slot.next_tick = now + slot.entity.tick_ms / 1000
            heapq.heappush(self._ticks, (slot.next_tick, key, sid))
            slot.mailbox.append((Command(slot.kind, slot.entity_id, TICK), lambda ok, p, v: None))
            if not slot.draining:
                slot.draining = True
                asyncio.get_running_loop().create_task(self._drain(slot))

    async def _housekeeping(self) -> None:
        sweep_every = max(0.5, min(30.0, self.idle_timeout_s / 4))
        next_sweep = self.clock() + sweep_every
        while True:
            # Every 10 ms: ticks fall due spread over time, so each turn runs a few of them, never
            # a burst of every active device group at once (which delayed commands by tens of ms).
            await asyncio.sleep(0.01)
            try:
                self.run_ticks()
                if self.clock() >= next_sweep:
                    next_sweep = self.clock() + sweep_every
                    await self.passivate_idle()
            except Exception:
                log.exception("housekeeping failed")

    # -- introspection -----------------------------------------------------------------------
    def stats(self) -> dict:
        return {"host_id": self.host_id, "incarnation": self.incarnation, "active": len(self.slots),
                "pending": len(self._pending), **self.metrics.as_dict()}
