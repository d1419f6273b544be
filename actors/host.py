"""EntityHost: owns many entities in one event loop, and is the only place they are written from.

Where a command goes (this file: mailbox, activation, handling; the rest in the parts named below):

  enqueue(cmd)  ->  per-entity mailbox  ->  activate on first message (store.load; store.acquire only
                                            when something is stored or the entity is about to write)
                ->  entity.handle(cmd)   ->  pending list (records not yet durable)
  committer     ->  store.append(batch)  (ONE transaction for everything pending: group commit)
                ->  release, in order: replies, pushes to interested gateways, effects (outbox)

Output gate (as Cloudflare's Durable Objects do it): the entity changes its in-memory state when
it handles a command, but nothing derived from that state — a reply, a push, an effect, even a
read's reply — leaves the host before the records it depends on are committed. If a commit fails,
the entity's in-memory state is ahead of the store, so the entity is evicted and every pending
outcome of it fails with a retryable error; the next message re-activates it from the store.
Clients retry with the same op id, and the op id travels inside the log entry, so a retry of an
operation that did commit (the answer was lost, the host died) is answered from the log, not
applied twice. A commit whose outcome is unknown (the store raised: it may have committed) also
sends a Gap to every interested gateway, so no subscriber is left behind a change it never saw.

Reads create no state: activation loads without acquiring the entity's epoch. An entity with nothing
stored is a *phantom* (a fresh object, not owned): commands whose outcome has no records are
answered from it and the phantom is dropped once its mailbox is empty. The first outcome with
records throws the phantom away, acquires (then loads again: someone may have created it
meanwhile) and handles the command again on the owned entity.

Effects to other entities are part of the committed log entry (a durable outbox): after the
commit they are sent, and kept in the slot's outbox until the target acknowledges; re-sent with
backoff, on re-activation of the source, and when a retried op is answered from the op cache.

Rejected alternative: await the commit inside handle() per command. That caps an entity at one
command per fsync and makes concurrent commands on one entity interleave at the await; pipelining
behind an output gate keeps the entity single-threaded and lets one fsync cover everything.

The host in parts (one class, EntityHost, over one state; each part a module):
  actors/host.py       entry points, interest, the per-entity mailbox, activation, handling
  actors/commit.py     group commit and release (the output gate)
  actors/outbox.py     effects to other entities until acknowledged
  actors/residency.py  snapshots, passivation under the budgets, ticks
  actors/opcache.py    op ids applied, per sender (idempotency)
  actors/maintenance.py  ERASE and COMPACT of one entity's storage (user data rights)
  actors/asks.py       an op's read of another entity, made before the op runs
  actors/slot.py       the per-entity record (Slot) and the log/snapshot packing

No Ray and no aiohttp here: actors/ray_host.py adapts this class to a Ray actor; tests and the
in-process scale model use it directly.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from actors.asks import Asks, ask_for
from actors.commit import GroupCommit, Pending
from actors.entity import Command, Entity, Env, Event, Outcome
from actors.host_metrics import Metrics
from actors.outbox import OutEffect, Outbox
from actors.ownership import Ownership, not_owner
from actors.maintenance import MAINTENANCE_OPS, Maintenance
from actors.residency import Residency
from actors.slot import RECOVER, RELAY, TICK, UNSUBSCRIBE, Sink, Slot, pack, unpack
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import ConnAddress, Push, Reply, answer, command_from_wire, command_to_wire
from storage.base import Store

log = logging.getLogger("syncopate.host")

# Hands an effect to its target. Returns an awaitable that resolves to the target's Reply (or raises)
# once the target has handled it; or None: the dispatcher took it over (fire-and-forget, tests).
Dispatch = Callable[[Command], "Awaitable[Reply | None] | None"]

# Budgets (constructor parameters; these are the defaults).
MAX_ACTIVE = 20_000            # entities in memory; over it the least recently used idle ones are passivated
MAX_MAILBOX = 1_000            # commands waiting for one entity; beyond it refused at once (OVERLOADED)
MAX_PENDING = 50_000           # outcomes handled and not yet released, host-wide; beyond it refused (OVERLOADED)

__all__ = ["EntityHost", "Dispatch", "Sink", "MAX_ACTIVE", "MAX_MAILBOX", "MAX_PENDING", "pack", "unpack"]


def _overloaded(what: str) -> SyncopateError:
    return SyncopateError(ErrorCode.OVERLOADED, f"{what}; retry later")


class EntityHost(GroupCommit, Outbox, Residency, Maintenance, Ownership):
    """Many entities in one event loop; the only place they are written from (see the module doc)."""

    def __init__(self, host_id: str, store: Store, kinds: dict[str, type[Entity]], env: Env, *,
                 deliver: Callable[[str, list], None] | None = None,
                 dispatch: Dispatch | None = None,
                 idle_timeout_s: float = 600.0,
                 clock: Callable[[], float] = time.time,
                 max_active: int = MAX_ACTIVE, max_mailbox: int = MAX_MAILBOX,
                 max_pending: int = MAX_PENDING, max_memory: int | None = None,
                 memory: Callable[[], int] | None = None) -> None:
        self.host_id = host_id
        self.incarnation = uuid.uuid4().hex[:12]
        self.store = store
        self.kinds = kinds
        self.env = env
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.max_active, self.max_mailbox, self.max_pending = max_active, max_mailbox, max_pending
        # A memory budget (bytes, e.g. the process's RSS as `memory()` reads it): over it, the least
        # recently used idle entities are passivated as for max_active, a tenth of them a round, until
        # it holds again (checked once a second). None: no memory budget.
        self.max_memory, self._memory = max_memory, memory
        self._next_memory_check = 0.0
        self._deliver = deliver or (lambda gw, items: None)
        self._dispatch = dispatch or (lambda cmd: None)
        self.slots: OrderedDict[str, Slot] = OrderedDict()      # least recently used first
        # entity key -> gateway id -> connection ids subscribed there. Per connection, not per gateway:
        # one connection's unsubscribe must not deafen another connection's subscribe on the same gateway.
        self.interest: dict[str, dict[str, set[str]]] = {}
        self._pending: list[Pending] = []
        self._outstanding = 0                                  # Pending queued and not yet released
        self._ticks: list[tuple[float, str, int]] = []     # (due, entity key, slot identity)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._recovering: set[str] = set()
        self._shedding = False
        self.metrics = Metrics()
        self._closed = False
        # Cross-entity reads an op declares (actors/asks.py) go the way effects go; a host without a
        # dispatch (one host holds everything) asks itself.
        self.asks = Asks(dispatch or self._ask_here, self.enqueue, self._spawn, self.metrics)
        self._init_ownership()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._committer(), name=f"{self.host_id}-committer"),
                       asyncio.create_task(self._housekeeping(), name=f"{self.host_id}-housekeeping")]
        await self._start_ownership()          # with a membership: the lease, and a place in the view

    async def close(self, *, passivate: bool = True) -> None:
        """Stop; with passivate, snapshot every entity first (a clean shutdown). Unacknowledged
        effects are in the snapshot (or the log) and are re-sent by the next activation."""
        if passivate:
            await self.drain()
            for slot in list(self.slots.values()):
                await self._passivate(slot, closing=True)
        self._closed = True
        for slot in list(self.slots.values()):
            for fx in slot.outbox.values():
                if fx.timer is not None:
                    fx.timer.cancel()
        for t in [*self._tasks, *self._background]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every handled command is released (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending or any(s.inflight or s.mailbox or s.draining for s in self.slots.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("host did not drain")
            await asyncio.sleep(0.001)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _ask_here(self, cmd: Command) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.enqueue(cmd, lambda reply: fut.done() or fut.set_result(reply))
        return fut

    # -- entry points ------------------------------------------------------------------------
    def enqueue(self, cmd: Command, sink: Sink, *, now: bool = False) -> None:
        """Queue a command for its entity. Never blocks; the sink is called exactly once. `now`: the
        caller is not inside an entity's handling or a release (a gateway's batch, `submit`), so a
        command for a resident, idle entity may be handled in this call (`_drain_now`)."""
        if cmd.origin is not None and not isinstance(cmd.origin, ConnAddress):
            try:
                cmd.origin = ConnAddress.parse(cmd.origin)
            except SyncopateError as err:
                sink(Reply.fail(err))
                return
        if cmd.kind not in self.kinds:
            sink(Reply.fail(SyncopateError(ErrorCode.NOT_FOUND, f"no entity kind {cmd.kind!r}")))
            return
        slot = self.slots.get(cmd.key)
        if cmd.op == UNSUBSCRIBE and cmd.origin:
            if slot is None:
                # Not active: nothing in flight can race with it, and activating it to drop interest
                # would be work (and state) for nothing.
                self._drop_interest(cmd.key, cmd.origin)
                sink(Reply())
                return
        moved = self.placed_here(cmd.key)
        if moved is not None:
            # The view places it elsewhere: not run here (the gateway retries it at the owner).
            self.metrics.refused_not_owner += 1
            sink(Reply.fail(not_owner(cmd.key, moved)))
            return
        if slot is None:
            if self._outstanding >= self.max_pending:
                self.metrics.refused_pending += 1
                sink(Reply.fail(_overloaded("the host has too many changes in flight")))
                return
            if len(self.slots) >= self.max_active:
                self._shed()
                if len(self.slots) >= self.max_active + max(16, self.max_active // 10):
                    self.metrics.refused_active += 1
                    sink(Reply.fail(_overloaded("the host holds too many entities")))
                    return
            slot = self.slots[cmd.key] = Slot(cmd.key, cmd.kind, cmd.entity_id)
        else:
            if len(slot.mailbox) >= self.max_mailbox:
                self.metrics.refused_mailbox += 1
                sink(Reply.fail(_overloaded(f"{cmd.key} has too many commands waiting")))
                return
            if self._outstanding >= self.max_pending:
                self.metrics.refused_pending += 1
                sink(Reply.fail(_overloaded("the host has too many changes in flight")))
                return
            self.slots.move_to_end(cmd.key)
        slot.mailbox.append((cmd, sink))
        slot.last_used = self.clock()
        if not slot.draining:
            slot.draining = True
            if now and slot.entity is not None and not slot.dead and cmd.op not in MAINTENANCE_OPS:
                self._drain_now(slot)
            else:
                asyncio.get_running_loop().create_task(self._drain(slot))

    async def call(self, cmd: Command) -> tuple[Any, int]:
        """Run one command and wait for its released answer: (reply, version); raises a refusal."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        def sink(reply: Reply) -> None:
            if not fut.done():
                fut.set_result(reply)

        self.enqueue(cmd, sink)
        reply = await fut
        if reply.error is not None:
            raise reply.error
        return reply.payload, reply.version

    def submit(self, gateway_id: str, requests: list[tuple[Any, Command]]) -> None:
        """A gateway's batch: each answer goes back to that gateway as wire.answer(token, Reply)."""
        for token, cmd in requests:
            self.enqueue(cmd, self._gateway_sink(gateway_id, token), now=True)

    def _gateway_sink(self, gateway_id: str, token: Any) -> Sink:
        def sink(reply: Reply) -> None:
            self._deliver(gateway_id, [answer(token, reply)])
        return sink

    def forget_gateway(self, gateway_id: str) -> None:
        for key in list(self.interest):
            gws = self.interest[key]
            if gws.pop(gateway_id, None) is not None and not gws:
                del self.interest[key]

    # -- interest ----------------------------------------------------------------------------------
    def interested(self, key: str) -> set[str]:
        """The gateways with at least one subscribed connection of `key`."""
        return set(self.interest.get(key, ()))

    def _add_interest(self, key: str, addr: ConnAddress) -> None:
        self.interest.setdefault(key, {}).setdefault(addr.gateway, set()).add(addr.conn)

    def _drop_interest(self, key: str, addr: ConnAddress) -> None:
        gws = self.interest.get(key)
        if gws is None:
            return
        conns = gws.get(addr.gateway)
        if conns is not None:
            conns.discard(addr.conn)
            if not conns:
                del gws[addr.gateway]
        if not gws:
            del self.interest[key]

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
                if cmd.op in MAINTENANCE_OPS:
                    # erase / compact (actors/maintenance.py): awaited here, so the commands behind
                    # it wait, as during an activation
                    await self._maintain(slot, cmd, sink)
                    continue
                self._handle(slot, cmd, sink)
        finally:
            slot.draining = False
            if slot.dead:
                self._fail_mailbox(slot, SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{slot.key} was evicted; retry"))
            if not slot.mailbox and self.slots.get(slot.key) is slot and (
                    slot.phantom or (slot.entity is None and not slot.inflight)):
                # A phantom is not resident: its answers are queued (in order) and it holds nothing
                # that is not in the store (nothing).
                del self.slots[slot.key]

    def _drain_now(self, slot: Slot) -> None:
        """The mailbox's one command, for a resident entity nobody is draining, handled here rather
        than by a task created for it (a task per command was a measurable part of the host's CPU
        per ack: one command in flight per client means one command per entity at a time).
        `_handle` never awaits; it queues the outcome behind the output gate exactly as from
        `_drain`. Whatever `_drain` would go on with — a command queued meanwhile (a phantom's write
        put back for its activation), an evicted or phantom slot to clean up — goes to a `_drain`
        task, which starts where this left off (the slot stays `draining` until it ends)."""
        cmd, sink = slot.mailbox.popleft()
        try:
            self._handle(slot, cmd, sink)
        except Exception:
            # as an exception in _drain's task would end it: logged, the slot cleaned up below
            log.exception("handling %s.%s failed", slot.key, cmd.op)
        if slot.mailbox or slot.dead or slot.phantom or slot.entity is None:
            asyncio.get_running_loop().create_task(self._drain(slot))
        else:
            slot.draining = False

    def _fail_mailbox(self, slot: Slot, err: SyncopateError) -> None:
        while slot.mailbox:
            _, sink = slot.mailbox.popleft()
            sink(Reply.fail(err))
        if self.slots.get(slot.key) is slot and slot.entity is None:
            del self.slots[slot.key]

    async def _activate(self, slot: Slot) -> None:
        t0 = time.perf_counter()
        # A host acquires an entity's epoch only to write: load first, and stay a phantom (not owned,
        # no owners row) if nothing is stored and no write is waiting.
        loaded = await self.store.load(slot.key)
        epoch, phantom = 0, not slot.want_owner and loaded.snapshot is None and not loaded.records
        if not phantom:
            epoch = await self._acquire(slot.key)     # under this host's lease, if it has one
            # Load again under the new epoch: a previous owner may have committed after the first load,
            # and from here on nobody else can.
            loaded = await self.store.load(slot.key)
        entity = self.kinds[slot.kind](slot.entity_id, self.env)
        slot.ops.clear()
        slot.outbox.clear()
        slot.acks.clear()
        acked: set[str] = set()
        outbox: dict[str, tuple[int, list]] = {}
        if loaded.snapshot is not None:
            snap = unpack(loaded.snapshot.data)
            entity.restore(snap["state"])
            for row in snap.get("ops", ()):
                if len(row) == 3:            # before replies were kept packed and keyed by sender
                    op_id, version, reply = row
                    slot.ops.remember(None, op_id, version, pack(reply), self.clock())
                else:
                    op_id, version, rb, by = row
                    slot.ops.remember(by, op_id, version, rb, self.clock())
            for version, w in snap.get("outbox", ()):
                outbox[command_from_wire(w).op_id] = (version, w)
            entity.version = loaded.snapshot.seq
        for rec in loaded.records:
            entry = unpack(rec.data)
            for r in entry["recs"]:
                entity.apply(r)
            entity.version = rec.seq
            if entry.get("op"):
                rb = entry["rb"] if "rb" in entry else pack(entry.get("reply"))
                slot.ops.remember(entry.get("by"), entry["op"], rec.seq, rb, self.clock())
            acked.update(entry.get("ack", ()))
            for w in entry.get("fx", ()):
                outbox[command_from_wire(w).op_id] = (rec.seq, w)
        slot.entity, slot.epoch, slot.phantom, slot.want_owner = entity, epoch, phantom, False
        slot.committed = entity.version
        slot.pushed = entity.version         # a subscriber behind this missed something: its gap shows
        slot.snapshot_seq = loaded.snapshot.seq if loaded.snapshot else 0
        if phantom:
            self.metrics.phantoms += 1
        elif entity.tick_ms:
            # Staggered by activation time; the heap hands out a few due ticks at a time.
            slot.next_tick = self.clock() + entity.tick_ms / 1000
            heapq.heappush(self._ticks, (slot.next_tick, slot.key, id(slot)))
        self.metrics.activations += 1
        self.metrics.activation_seconds += time.perf_counter() - t0
        # Every effect of the loaded state not known to be acknowledged goes out again: the previous
        # incarnation may have died between its commit and the target's acknowledgement. Targets
        # apply an effect op id once, so a re-send of an acknowledged one changes nothing.
        for op_id, (version, w) in outbox.items():
            if op_id not in acked:
                fx = slot.outbox[op_id] = OutEffect(command_from_wire(w), version)
                self._send_effect(slot, fx)

    def _handle(self, slot: Slot, cmd: Command, sink: Sink) -> None:
        entity = slot.entity
        self.metrics.commands += 1
        if not slot.phantom and not self.lease_ok():
            # Fenced: without a valid lease a new owner may exist; this copy may be behind it.
            self._evict(slot)
            sink(Reply.fail(SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{self.host_id} holds no lease; retry")))
            return
        if cmd.op_id:
            hit = slot.ops.lookup(cmd.principal.user_id, cmd.op_id)
            if hit is not None:
                version, rb = hit
                self._queue(Pending(slot, sink, Reply(version, unpack(rb) if rb is not None else None),
                                    resend=version))
                return
        if cmd.op == UNSUBSCRIBE and cmd.origin:
            # In mailbox order: a subscribe queued before it is released before the interest drops.
            self._queue(Pending(slot, sink, Reply(entity.version), interest=("-", cmd.origin)))
            return
        try:
            ask = ask_for(entity, entity.ops.get(cmd.op), cmd)
        except SyncopateError as err:
            self._queue(Pending(slot, sink, Reply(entity.version, None, err)))
            return
        if ask is not None:
            # The op reads another entity first (actors/asks.py). The command leaves the mailbox
            # while the ask is out and comes back with the answer in cmd.asked (and is asked
            # again here for the op's next ask, if any); the slot counts
            # it in flight meanwhile, so it is not passivated under it.
            slot.inflight += 1
            self.asks.start(ask, cmd, sink, done=lambda: self._asked(slot))
            return
        cmd.now_ms = int(self.clock() * 1000)
        try:
            if cmd.op == RELAY and cmd.principal.system:
                # Ephemeral state (Yjs awareness): ordered with the entity's own pushes, never stored.
                outcome = Outcome(events=[Event(str(cmd.args["type"]), cmd.args.get("payload"))])
            elif cmd.op == TICK:
                outcome = entity.tick(cmd.now_ms)
            elif cmd.op == RECOVER and cmd.principal.system:
                outcome = None              # the activation (outbox re-send) was the point
            else:
                outcome = entity.handle(cmd)
        except SyncopateError as err:
            self.metrics.errors[err.code.value] = self.metrics.errors.get(err.code.value, 0) + 1
            self._queue(Pending(slot, sink, Reply(entity.version, None, err)))
            return
        except Exception as exc:
            # A bug, not a refusal: the entity may be half-changed, so drop it and reload from the store.
            log.exception("%s.%s failed", slot.key, cmd.op)
            self._evict(slot)
            sink(Reply.fail(SyncopateError(ErrorCode.INTERNAL, f"{cmd.op} failed: {type(exc).__name__}")))
            return
        if outcome is None:
            sink(Reply(entity.version))
            return
        if slot.phantom and outcome.records:
            # A write on an entity nobody owns: throw the phantom away (it already applied the
            # change in memory), acquire, load again, and handle this command on what is stored.
            slot.entity, slot.phantom, slot.want_owner = None, False, True
            slot.mailbox.appendleft((cmd, sink))
            return
        entry = None
        effects: list[OutEffect] = []
        version = entity.version + (1 if outcome.records else 0)
        for i, eff in enumerate(outcome.effects):
            if eff.op_id is None:
                eff.op_id = f"{slot.key}@{version}.{cmd.op_id or cmd.now_ms}#{i}"
            effects.append(OutEffect(eff, version, durable=bool(outcome.records)))
        if outcome.records:
            entity.version = version
            rb = pack(outcome.reply) if cmd.op_id else None
            body: dict = {"op": cmd.op_id, "recs": outcome.records}
            if cmd.op_id:
                body["by"], body["rb"] = cmd.principal.user_id, rb
            if effects:
                body["fx"] = [command_to_wire(fx.cmd) for fx in effects]
            if slot.acks:
                body["ack"], slot.acks = slot.acks, []
            entry = pack(body)
            if cmd.op_id:
                slot.ops.remember(cmd.principal.user_id, cmd.op_id, version, rb, self.clock())
        pushes = []
        fresh = entry is not None       # the push announces a new version (not re-sent state)
        for ev in outcome.events:
            user = conn = None
            if ev.to:
                if ev.to.startswith("conn:"):
                    try:
                        conn = ConnAddress.parse(ev.to)
                    except SyncopateError:
                        log.error("%s: event %s addressed to a malformed connection %r", slot.key, ev.type, ev.to)
                        continue
                    if entity.per_user:
                        user = entity.id     # the gateway checks the connection belongs to this user
                else:
                    user = ev.to
            pushes.append(Push(slot.key, version, ev.type, ev.payload, user, conn, ev.close, fresh))
        sub = ("+", cmd.origin) if (cmd.follow or cmd.op == "subscribe") and cmd.origin else None
        self._queue(Pending(slot, sink, Reply(version, outcome.reply), entry, pushes, effects, sub))

    def _asked(self, slot: Slot) -> None:
        slot.inflight -= 1

    # -- introspection -----------------------------------------------------------------------
    def stats(self) -> dict:
        return {"host_id": self.host_id, "incarnation": self.incarnation, "active": len(self.slots),
                "pending": len(self._pending), "outstanding": self._outstanding,
                "outbox": sum(len(s.outbox) for s in self.slots.values()),
                "budget_max_active": self.max_active, "budget_max_mailbox": self.max_mailbox,
                "budget_max_pending": self.max_pending, "budget_max_memory": self.max_memory or 0,
                "store_timing": self.store.timing(), **self.metrics.as_dict()}
