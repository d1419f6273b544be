"""EntityHost: owns many entities in one event loop, and is the only place they are written from.

Where a command goes (the whole write path is in this file):

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
from typing import Any, Awaitable, Callable

import msgpack

from actors.entity import SYSTEM, Command, Entity, Env, Event, Outcome
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import ConnAddress, Gap, Push, Reply, answer, command_from_wire, command_to_wire
from storage.base import Append, Record, Snapshot, Store

log = logging.getLogger("syncopate.host")

# A reply sink receives the Reply of one command, exactly once.
Sink = Callable[[Reply], None]
# Hands an effect to its target. Returns an awaitable that resolves to the target's Reply (or raises)
# once the target has handled it; or None: the dispatcher took it over (fire-and-forget, tests).
Dispatch = Callable[[Command], "Awaitable[Reply | None] | None"]
TICK = "__tick__"
RECOVER = "__recover__"        # internal: activate the entity so its outbox is re-sent (unknown commit outcome)
UNSUBSCRIBE = "unsubscribe"
RELAY = "relay"                # system op: push {type, payload} to the entity's subscribers, store nothing

# Idempotency memory, per entity: op ids with their version, and the reply while it is small. A reply
# over OP_REPLY_MAX_BYTES is not kept in memory, and the oldest replies are dropped once the entity's
# total passes OP_REPLY_BUDGET_BYTES: a retry of such an op is answered with its version and no
# payload (the change is not applied twice; the client re-reads if it needs the value). Decided so:
# the cache used to hold 1,024 full replies per entity, one per request, whatever their size.
OPS_REMEMBERED = 1024
OP_RETRY_WINDOW_S = 300.0      # and only for this long: a retry comes within seconds, not hours (an
                               # op id older than this is applied again if retried). Without it the
                               # caches of a fixed population kept filling for as long as it ran.
OP_REPLY_MAX_BYTES = 4096
OP_REPLY_BUDGET_BYTES = 64 << 10
ACKS_CARRIED = 4096            # acknowledged effect ids carried by the next log entry (beyond: re-sent, harmless)
EFFECT_BACKOFF_S = (0.02, 5.0)  # first retry, cap

# Budgets (constructor parameters; these are the defaults).
MAX_ACTIVE = 20_000            # entities in memory; over it the least recently used idle ones are passivated
MAX_MAILBOX = 1_000            # commands waiting for one entity; beyond it refused at once (OVERLOADED)
MAX_PENDING = 50_000           # outcomes handled and not yet released, host-wide; beyond it refused (OVERLOADED)


_PACKER = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    # one Packer, reused (packb builds one per call); the host packs on its event loop only
    try:
        return _PACKER.pack(obj)
    except BaseException:
        _PACKER.reset()
        raise


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _overloaded(what: str) -> SyncopateError:
    return SyncopateError(ErrorCode.OVERLOADED, f"{what}; retry later")


@dataclass
class OutEffect:
    """One effect of a committed entry, until its target acknowledges it."""
    cmd: Command
    version: int                         # the source entry that carries it
    durable: bool = True                 # in the log (False: an outcome without records carried it)
    attempts: int = 0
    sending: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass
class Slot:
    """One activated (or activating) entity."""
    key: str
    kind: str
    entity_id: str
    entity: Entity | None = None
    epoch: int = 0
    phantom: bool = False                # nothing stored and not owned: answers reads, is never written
    want_owner: bool = False             # the next activation acquires even if nothing is stored
    mailbox: deque = field(default_factory=deque)
    draining: bool = False
    dead: bool = False                   # evicted: in-memory state may be ahead of the store
    ops: OrderedDict = field(default_factory=OrderedDict)   # (user, op_id) -> (version, packed reply | None)
    ops_bytes: int = 0
    ops_at: dict = field(default_factory=dict)                 # (user, op_id) -> when remembered (host clock)
    ops_with_reply: deque = field(default_factory=deque)     # keys with a remembered reply, oldest first
    outbox: dict = field(default_factory=dict)               # effect op id -> OutEffect (unacknowledged)
    acks: list = field(default_factory=list)                  # effect ids acknowledged since the last entry
    committed: int = 0                   # last version known durable
    pushed: int = -1                     # version of the last fresh push to subscribers (-1: none yet)
    snapshot_seq: int = 0
    last_used: float = 0.0
    next_tick: float = 0.0
    inflight: int = 0                    # outcomes handled but not yet released
    snapshotting: bool = False


@dataclass
class Pending:
    slot: Slot
    sink: Sink
    reply: Reply
    entry: bytes | None = None           # the log entry to commit (None: nothing to persist)
    pushes: list = field(default_factory=list)       # Push items; gateways are chosen at release
    effects: list = field(default_factory=list)      # OutEffect
    interest: tuple | None = None        # ("+", ConnAddress) subscribe/follow, ("-", ConnAddress) unsubscribe
    resend: int | None = None            # answered from the op cache: re-send that version's effects
    included: bool = False               # its entry went into the store call of its batch


class Metrics:
    """Counters the adapters export (stats(): the gateway's /metrics; plain numbers in tests).
    Budget counters have `budget` or `refused` in their names."""

    def __init__(self) -> None:
        self.commands = 0
        self.activations = 0
        self.phantoms = 0                 # activations that found nothing stored (not acquired)
        self.passivations = 0
        self.commits = 0
        self.committed_entries = 0
        self.commit_seconds = 0.0
        self.activation_seconds = 0.0
        self.unknown_commits = 0          # store.append raised: the outcome is unknown (Gap sent)
        self.gaps_sent = 0
        self.effects_sent = 0
        self.effects_retried = 0
        self.effects_acked = 0
        self.refused_mailbox = 0          # MAX_MAILBOX reached
        self.refused_pending = 0          # MAX_PENDING reached
        self.refused_active = 0           # MAX_ACTIVE reached and nothing could be passivated in time
        self.budget_passivations = 0      # LRU passivations to stay under MAX_ACTIVE or the memory budget
        self.budget_memory_over = 0       # checks that found the process over its memory budget
        self.budget_stream_closes = 0     # a gateway stream closed: its host-side buffer was over budget
        self.budget_oversized_items = 0   # a reply or push over the item limit, replaced by an error / Gap
        self.budget_frames_split = 0      # batches split to keep every frame under the frame limit
        self.malformed_commands = 0       # command items that failed to decode (answered MALFORMED_FRAME)
        self.errors: dict[str, int] = {}

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class EntityHost:
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

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._committer(), name=f"{self.host_id}-committer"),
                       asyncio.create_task(self._housekeeping(), name=f"{self.host_id}-housekeeping")]

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

    # -- entry points ------------------------------------------------------------------------
    def enqueue(self, cmd: Command, sink: Sink) -> None:
        """Queue a command for its entity. Never blocks; the sink is called exactly once."""
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
            self.enqueue(cmd, self._gateway_sink(gateway_id, token))

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
            epoch = await self.store.acquire(slot.key)
            # Load again under the new epoch: a previous owner may have committed after the first load,
            # and from here on nobody else can.
            loaded = await self.store.load(slot.key)
        entity = self.kinds[slot.kind](slot.entity_id, self.env)
        slot.ops.clear()
        slot.ops_at.clear()
        slot.ops_bytes = 0
        slot.ops_with_reply.clear()
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
                    self._remember(slot, None, op_id, version, pack(reply))
                else:
                    op_id, version, rb, by = row
                    self._remember(slot, by, op_id, version, rb)
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
                self._remember(slot, entry.get("by"), entry["op"], rec.seq, rb)
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

    def _remember(self, slot: Slot, by: str | None, op_id: str, version: int, rb: bytes | None) -> None:
        key = (by, op_id)
        old = slot.ops.pop(key, None)
        if old is not None and old[1] is not None:
            slot.ops_bytes -= len(old[1])
        if rb is not None and len(rb) > OP_REPLY_MAX_BYTES:
            rb = None
        slot.ops[key] = (version, rb)
        now = self.clock()
        slot.ops_at[key] = now
        if rb is not None:
            slot.ops_bytes += len(rb)
            slot.ops_with_reply.append(key)
        cutoff = now - OP_RETRY_WINDOW_S
        while slot.ops and (len(slot.ops) > OPS_REMEMBERED or slot.ops_at.get(next(iter(slot.ops)), now) < cutoff):
            k, (_, gone) = slot.ops.popitem(last=False)      # oldest first: insertion order is time order
            slot.ops_at.pop(k, None)
            if gone is not None:
                slot.ops_bytes -= len(gone)
        while slot.ops_bytes > OP_REPLY_BUDGET_BYTES and slot.ops_with_reply:
            k = slot.ops_with_reply.popleft()
            row = slot.ops.get(k)
            if row is not None and row[1] is not None:
                slot.ops_bytes -= len(row[1])
                slot.ops[k] = (row[0], None)
        if len(slot.ops_with_reply) > 2 * OPS_REMEMBERED:
            # keys that lapsed from `ops` linger in the deque; rebuild it now and then
            slot.ops_with_reply = deque(k for k, (_, r) in slot.ops.items() if r is not None)

    def _cached(self, slot: Slot, cmd: Command) -> tuple[int, bytes | None] | None:
        hit = slot.ops.get((cmd.principal.user_id, cmd.op_id))
        if hit is None:
            hit = slot.ops.get((None, cmd.op_id))     # a legacy entry, recorded before senders were
        return hit

    def _handle(self, slot: Slot, cmd: Command, sink: Sink) -> None:
        entity = slot.entity
        self.metrics.commands += 1
        if cmd.op_id:
            hit = self._cached(slot, cmd)
            if hit is not None:
                version, rb = hit
                self._queue(Pending(slot, sink, Reply(version, unpack(rb) if rb is not None else None),
                                    resend=version))
                return
        if cmd.op == UNSUBSCRIBE and cmd.origin:
            # In mailbox order: a subscribe queued before it is released before the interest drops.
            self._queue(Pending(slot, sink, Reply(entity.version), interest=("-", cmd.origin)))
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
                self._remember(slot, cmd.principal.user_id, cmd.op_id, version, rb)
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

    def _queue(self, p: Pending) -> None:
        p.slot.inflight += 1
        self._outstanding += 1
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
        slots: dict[str, Slot] = {}
        for p in batch:
            if p.entry is not None and not p.slot.dead:
                a = appends.get(p.slot.key)
                if a is None:
                    a = appends[p.slot.key] = Append(p.slot.key, p.slot.epoch, [])
                    slots[p.slot.key] = p.slot
                a.records.append(Record(p.reply.version, p.entry))
                p.included = True
        failed: dict[str, SyncopateError] = {}
        unknown = False
        if appends:
            items = list(appends.values())
            t0 = time.perf_counter()
            try:
                # The one await of the write path. Commands keep arriving and being handled while
                # it runs; their outcomes wait in self._pending for the next batch.
                results = await self.store.append(items)
            except Exception as exc:
                # Not a per-item refusal: the transaction may or may not have committed (a timeout
                # during COMMIT). Fail the outcomes (retryable: a retry is answered from the log if
                # it did commit), and tell the interested gateways their subscribers may have a gap.
                log.warning("store append raised (%s): outcome unknown", exc)
                unknown = True
                self.metrics.unknown_commits += 1
                err = exc if isinstance(exc, SyncopateError) else SyncopateError(ErrorCode.STORE_UNAVAILABLE, str(exc))
                results = [err] * len(items)
            self.metrics.commits += 1
            self.metrics.commit_seconds += time.perf_counter() - t0
            for a, res in zip(items, results):
                if res is None:
                    self.metrics.committed_entries += len(a.records)
                    slots[a.key].committed = max(slots[a.key].committed, a.records[-1].seq)
                else:
                    failed[a.key] = res
        gapped: dict[str, set[str]] = {}
        for p in batch:
            p.slot.inflight -= 1
            self._outstanding -= 1
            err = failed.get(p.slot.key)
            if err is None and p.slot.dead and not (p.included and p.entry is not None):
                # Evicted after it was handled: a read (or a write left out of the append) may reflect
                # in-memory state the store never got. A committed write is released below.
                err = SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"{p.slot.key} was evicted; retry")
            if err is not None:
                if unknown and p.slot.key in failed:
                    # the gateways of connection-addressed pushes too: they may have no interest entry
                    gapped.setdefault(p.slot.key, set()).update(
                        push.conn.gateway for push in p.pushes if push.conn is not None)
                self._evict(p.slot)
                p.sink(Reply.fail(err))
                continue
            if p.interest is not None:
                sign, addr = p.interest
                if sign == "+":
                    self._add_interest(p.slot.key, addr)    # only a successful subscribe adds interest
                else:
                    self._drop_interest(p.slot.key, addr)
            p.sink(p.reply)
            for push in p.pushes:
                if push.conn is not None:
                    self._deliver(push.conn.gateway, [push])
                else:
                    if push.fresh:
                        # chain the subscribers' pushes: each names the version before it, so a
                        # gateway whose member saw less knows it missed one (gateway/subscriptions.py)
                        push.prev, p.slot.pushed = p.slot.pushed, push.version
                    for gw in self.interest.get(push.key, ()):
                        self._deliver(gw, [push])
            for fx in p.effects:
                p.slot.outbox[fx.cmd.op_id] = fx
                self._send_effect(p.slot, fx)
            if p.effects and p.slot.dead:
                self._recover(p.slot)   # committed, but its slot is gone: the next activation sends them
            if p.resend is not None:
                # A retried op: whatever of its effects is still unacknowledged goes out again now.
                for fx in list(p.slot.outbox.values()):
                    if fx.version == p.resend and not fx.sending:
                        if fx.timer is not None:
                            fx.timer.cancel()
                            fx.timer = None
                        self._send_effect(p.slot, fx)
        for key, extra in gapped.items():
            slot = slots[key]
            for gw in set(self.interest.get(key, ())) | extra:
                self.metrics.gaps_sent += 1
                self._deliver(gw, [Gap(key, slot.committed)])
            # If it did commit, its effects are in the log: activate it again so they are sent.
            self._recover(slot)
        for key in {p.slot.key for p in batch if p.entry is not None}:
            slot = self.slots.get(key)
            if slot and slot.entity and not slot.dead and not slot.snapshotting \
                    and slot.committed - slot.snapshot_seq >= slot.entity.snapshot_every:
                # Compaction runs beside the committer, never in front of the next commit.
                slot.snapshotting = True
                self._spawn(self._snapshot(slot))

    def _evict(self, slot: Slot) -> None:
        if slot.dead:
            return
        slot.dead = True
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        if any(fx.durable for fx in slot.outbox.values()):
            self._recover(slot)        # its unacknowledged effects are in the store: re-send from there

    def _recover(self, slot: Slot) -> None:
        """Activate `slot.key` again (with backoff while the store refuses), so that the outbox of
        what is stored is re-sent even if no client sends it anything."""
        if slot.key in self._recovering or self._closed:
            return
        self._recovering.add(slot.key)

        async def run() -> None:
            delay = EFFECT_BACKOFF_S[0]
            try:
                while not self._closed:
                    try:
                        await self.call(Command(slot.kind, slot.entity_id, RECOVER, {}, SYSTEM))
                        return
                    except SyncopateError as err:
                        if not err.retryable:
                            log.warning("recovery of %s refused: %s", slot.key, err)
                            return
                    # Backoff while the store (or the host's budgets) refuse.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, EFFECT_BACKOFF_S[1])
            finally:
                self._recovering.discard(slot.key)

        self._spawn(run())

    # -- the outbox ------------------------------------------------------------------------------
    def _send_effect(self, slot: Slot, fx: OutEffect) -> None:
        fx.timer = None
        if self._closed or fx.sending or slot.outbox.get(fx.cmd.op_id) is not fx:
            return
        if slot.dead and fx.durable:
            return                    # the recovery's activation re-sends it from the store
        fx.sending = True
        self.metrics.effects_sent += 1
        if fx.attempts:
            self.metrics.effects_retried += 1
        try:
            res = self._dispatch(fx.cmd)
        except Exception as exc:
            log.warning("effect %s on %s: dispatch failed: %s", fx.cmd.op, fx.cmd.key, exc)
            self._effect_retry(slot, fx)
            return
        if res is None:
            self._effect_acked(slot, fx)     # a dispatcher that takes effects over (fire-and-forget)
            return
        fut = asyncio.ensure_future(res)
        fut.add_done_callback(lambda f: self._effect_done(slot, fx, f))

    def _effect_done(self, slot: Slot, fx: OutEffect, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self._effect_retry(slot, fx)
            return
        exc = fut.exception()
        reply = fut.result() if exc is None else None
        err = exc if exc is not None else (reply.error if isinstance(reply, Reply) else None)
        if err is None:
            self._effect_acked(slot, fx)
        elif isinstance(err, SyncopateError) and not err.retryable:
            # The target decided (a refusal is an answer): retrying would get the same refusal.
            log.warning("effect %s on %s refused: %s", fx.cmd.op, fx.cmd.key, err)
            self._effect_acked(slot, fx)
        else:
            self._effect_retry(slot, fx)

    def _effect_retry(self, slot: Slot, fx: OutEffect) -> None:
        fx.sending = False
        if self._closed or slot.outbox.get(fx.cmd.op_id) is not fx:
            return
        delay = min(EFFECT_BACKOFF_S[0] * (2 ** fx.attempts), EFFECT_BACKOFF_S[1])
        fx.attempts += 1
        fx.timer = asyncio.get_running_loop().call_later(delay, self._send_effect, slot, fx)

    def _effect_acked(self, slot: Slot, fx: OutEffect) -> None:
        fx.sending = False
        if slot.outbox.pop(fx.cmd.op_id, None) is None:
            return
        self.metrics.effects_acked += 1
        if fx.durable:
            # Carried by the next log entry, so a re-activation does not send it again.
            slot.acks.append(fx.cmd.op_id)
            if len(slot.acks) > ACKS_CARRIED:
                del slot.acks[:len(slot.acks) - ACKS_CARRIED]

    # -- snapshots -------------------------------------------------------------------------------
    async def _snapshot(self, slot: Slot) -> bool:
        """Write a snapshot of the committed state. Only committed state may be snapshotted: when
        uncommitted outcomes are in flight the in-memory entity is ahead of the log, so wait for
        them (the snapshot would otherwise claim records that may still fail)."""
        try:
            while not slot.dead and slot.entity is not None and slot.committed != slot.entity.version:
                await asyncio.sleep(0.001)
            if slot.dead or slot.entity is None or slot.phantom:
                return False
            entity = slot.entity
            seq = entity.version
            data = pack({"state": entity.snapshot(),
                         "ops": [[op, v, rb, by] for (by, op), (v, rb) in slot.ops.items()],
                         # the unacknowledged effects: the log entries that carried them are dropped
                         "outbox": [[fx.version, command_to_wire(fx.cmd)] for fx in slot.outbox.values()
                                    if fx.version <= seq]})
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
    def _passivable(self, slot: Slot) -> bool:
        return not (slot.entity is None or slot.mailbox or slot.inflight or slot.draining or slot.dead
                    or slot.snapshotting)

    async def _passivate(self, slot: Slot, *, closing: bool = False) -> bool:
        if not self._passivable(slot):
            return False
        if slot.outbox and not closing:
            return False              # effects still on their way: they need this slot to retry
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

    def _shed(self, excess: int | None = None) -> None:
        """Over MAX_ACTIVE (or the memory budget: `excess` given): passivate least recently used idle
        entities (in the background: each one writes its snapshot first). Entities with work in
        flight, outboxes, or that refuse (idle()) stay."""
        if self._shedding or self._closed:
            return
        if excess is None:
            excess = len(self.slots) - self.max_active + 1
        victims = []
        for slot in self.slots.values():          # least recently used first
            if len(victims) >= max(excess, 1) + 16:
                break
            if self._passivable(slot) and not slot.outbox and slot.entity.idle():
                victims.append(slot)
        if not victims:
            return
        self._shedding = True

        async def run() -> None:
            try:
                for slot in victims:
                    if await self._passivate(slot):
                        self.metrics.budget_passivations += 1
            finally:
                self._shedding = False

        self._spawn(run())

    def run_ticks(self, now: float | None = None) -> None:
        """Queue a tick for every entity whose tick is due (a heap of deadlines: O(due), not O(active))."""
        now = self.clock() if now is None else now
        while self._ticks and self._ticks[0][0] <= now:
            _, key, sid = heapq.heappop(self._ticks)
            slot = self.slots.get(key)
            if slot is None or id(slot) != sid or slot.dead or slot.entity is None or slot.phantom:
                continue                       # passivated or evicted since: its heap entry lapses
            slot.next_tick = now + slot.entity.tick_ms / 1000
            heapq.heappush(self._ticks, (slot.next_tick, key, sid))
            slot.mailbox.append((Command(slot.kind, slot.entity_id, TICK), lambda reply: None))
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
                if len(self.slots) > self.max_active:
                    self._shed()
                elif self.max_memory is not None and self._memory is not None \
                        and time.monotonic() >= self._next_memory_check:
                    self._next_memory_check = time.monotonic() + 1.0
                    if self._memory() > self.max_memory and self.slots:
                        self.metrics.budget_memory_over += 1
                        self._shed(max(1, len(self.slots) // 10))
                if self.clock() >= next_sweep:
                    next_sweep = self.clock() + sweep_every
                    await self.passivate_idle()
            except Exception:
                log.exception("housekeeping failed")

    # -- introspection -----------------------------------------------------------------------
    def stats(self) -> dict:
        return {"host_id": self.host_id, "incarnation": self.incarnation, "active": len(self.slots),
                "pending": len(self._pending), "outstanding": self._outstanding,
                "outbox": sum(len(s.outbox) for s in self.slots.values()),
                "budget_max_active": self.max_active, "budget_max_mailbox": self.max_mailbox,
                "budget_max_pending": self.max_pending, "budget_max_memory": self.max_memory or 0,
                **self.metrics.as_dict()}
