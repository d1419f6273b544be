"""The entity contract: a plain Python object, no Ray, no aiohttp, no clock, no I/O.

An entity takes a `Command`, validates it, changes its own state, and returns an `Outcome`:
the reply for the sender, the records to persist, the events to push, and the commands to send to
other entities. The host (actors/host.py) persists the records *before* it releases the reply or
the events (an output gate), so nothing a client sees can be lost by a crash.

Rules an entity follows:
- `handle` raises SyncopateError to refuse, and then must not have changed any state.
- `apply(record)` replays one persisted record; replaying every record from a restored snapshot
  rebuilds exactly the state `handle` produced. Records and snapshots are msgpack-able values.
- Time comes in the command (`cmd.now_ms`, the server clock); randomness from the command too.
- `self.version` is maintained by the host: the number of the last committed log entry. A mutating
  command becomes entry `self.version + 1`; pushes carry it.

Ops are declared once, on the method that runs them: `@op("seek", args={"position_ms": Int(lo=0,
required=True)}, control=True, fenced=True)`. The class collects them (`Entity.ops`, name -> OpSpec)
and one `Entity.handle` dispatches for every entity, in this order: unknown op -> UNKNOWN_MESSAGE_TYPE
(the code the gateway answers for a message type it does not know, so "no such operation" is one
code whoever notices it; BAD_REQUEST stays the code of a known op sent out of range); args not an
object -> INVALID_FIELD; a system op from a user -> FORBIDDEN; then the entity's `authorize` (its
roles: the owner of a per-user entity, a playlist's editors, premium for control ops, the transfer
fence); then the declared arguments are parsed (actors/args.py) and the op runs with them. The docs'
op tables are checked against the registry (tests/test_op_registry.py).

An op that needs to read another entity (the device group's `play` of a playlist context, a playback
command of a group that does not know its user's market yet) declares an `ask` (actors/asks.py): the
host makes that read, as the commanding user, before it hands the command to the entity, and the op
finds the answer in `cmd.asked`. The entity itself still does no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from actors.args import Args, Field, parse
from protocols.errors import ErrorCode, SyncopateError


@dataclass(frozen=True)
class Principal:
    """Who sends a command: from the verified token."""
    user_id: str
    product: str = "premium"          # "premium" | "free"
    device_id: str | None = None      # the device / session the token or connection belongs to
    system: bool = False              # internal commands (effects, gateway notices) only
    issued_at: int = 0                # the token's iat (unix s): a device signed out later refuses it
    expires_at: int = 0               # the token's exp (unix s); 0 = no token (internal principals)

    @property
    def premium(self) -> bool:
        return self.product == "premium"


SYSTEM = Principal(user_id="@system", system=True)


@dataclass
class Command:
    kind: str
    entity_id: str
    op: str
    args: dict = field(default_factory=dict)
    principal: Principal = SYSTEM
    op_id: str | None = None          # idempotency key: the same op id is applied once
    now_ms: int = 0                   # server clock, filled in by the host when it handles the command
    origin: tuple[str, str] | None = None   # the ConnAddress (gateway id, connection id) that sent it, if any
    follow: bool = False              # on success, push this entity's events to the origin gateway
                                      # (op "subscribe" always does)
    asked: Any = None                 # {Ask.into: what another entity answered} for the op's asks
                                      # (actors/asks.py): set by the host alone, never carried by the
                                      # wire (a client can't forge it)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.entity_id}"


@dataclass
class Event:
    """A push. `type` is a protocols.MessageType value; the host stamps `version` after commit.

    `to` narrows the audience: None = every connection subscribed to the entity; otherwise a
    user id (only that user's subscribed connections) or "conn:<gateway>/<connection>" for one.
    `close` asks the gateway to close the addressed connections after delivering (sign-out)."""
    type: str
    payload: Any
    to: str | None = None
    close: bool = False


@dataclass
class Outcome:
    reply: Any = None
    records: list = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    effects: list[Command] = field(default_factory=list)


@dataclass(frozen=True)
class OpSpec:
    """One op of an entity: its name, the role it needs (the entity's `authorize` reads it), its
    argument schema and its flags. `system`: internal (effects, gateway notices) only; `control`: a
    playback command (premium only); `fenced`: refused when `args.revision` predates the last transfer.
    `ask`: a cross-entity read the host makes before the op runs (actors/asks.py), or a tuple of them
    made in order: `ask(entity, cmd)` answers the `Ask` for this command, or None when it needs none;
    the answer reaches the op as `cmd.asked[ask.into]`."""
    name: str
    fn: Callable
    args: dict[str, Field] | None = None
    role: str | None = None
    system: bool = False
    control: bool = False
    fenced: bool = False
    ask: Callable | tuple | None = None

    def flags(self) -> tuple[str, ...]:
        return tuple(f for f in ("system", "control", "fenced") if getattr(self, f))


def op(name: str, *, args: dict[str, Field] | None = None, role: str | None = None, system: bool = False,
       control: bool = False, fenced: bool = False, ask: Callable | tuple | None = None):
    """Declare the decorated method as op `name` (stack it to serve one method under two names)."""
    def deco(fn):
        fn.__dict__.setdefault("_ops", []).append(
            lambda f: OpSpec(name, f, args, role, system, control, fenced, ask))
        return fn
    return deco


class Entity:
    kind: ClassVar[str] = ""
    ops: ClassVar[dict[str, OpSpec]] = {}
    snapshot_every: ClassVar[int] = 500       # write a snapshot (compaction) after this many records
    tick_ms: ClassVar[int | None] = None      # call tick() this often while active (heartbeats)
    per_user: ClassVar[bool] = False          # the entity id is a user id (session, device group): a push
                                              # addressed to a connection is checked against that user

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        ops: dict[str, OpSpec] = {}
        for klass in reversed(cls.__mro__):          # mixins' ops too (actors/devicegroup_*.py)
            for fn in list(vars(klass).values()):
                for make in getattr(fn, "_ops", ()):
                    spec = make(fn)
                    ops[spec.name] = spec
        cls.ops = ops

    def __init__(self, entity_id: str, env: "Env") -> None:
        self.id = entity_id
        self.env = env
        self.version = 0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    def handle(self, cmd: Command) -> Outcome:
        spec = self.ops.get(cmd.op)
        if spec is None:
            raise SyncopateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"{self.kind} has no op {cmd.op!r}")
        if not isinstance(cmd.args, dict):
            raise SyncopateError(ErrorCode.INVALID_FIELD, "args must be an object")
        if spec.system and not cmd.principal.system:
            raise SyncopateError(ErrorCode.FORBIDDEN, f"{cmd.op} is an internal operation")
        role = self.authorize(cmd, spec)
        a = parse(spec.args, cmd.args)
        a.role = role
        return self.run(spec, cmd, a)

    def authorize(self, cmd: Command, spec: OpSpec) -> str | None:
        """Refuse (raise) a sender the op's role does not admit; the answer is the sender's role."""
        return None

    def run(self, spec: OpSpec, cmd: Command, a: Args) -> Outcome:
        """Run the op (an entity wraps it with what every op of it shares)."""
        return spec.fn(self, cmd, a)

    def apply(self, record: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def snapshot(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def restore(self, data: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def tick(self, now_ms: int) -> Outcome | None:
        """Periodic work while active (tick_ms set): e.g. expire silent devices."""
        return None

    def idle(self) -> bool:
        """May the host passivate this entity now? (e.g. not while devices are connected)"""
        return True


@dataclass
class Env:
    """What every entity may consult: read-only catalog and limits. Same in every host process."""
    catalog: Any = None
    config: dict = field(default_factory=dict)
