"""The typed wire between gateways and hosts: what crosses the host channel, and its one codec.

Four values cross a module boundary on the delivery path, and nothing else does:

  Command      gateway -> host    (actors/entity.py: kind, id, op, args, principal, op id, origin)
  Reply        host -> gateway    the answer to one command: a value and its version, or an error
  Push         host -> gateway    an event of an entity for its subscribers (after its commit)
  Gap          host -> gateway    "pushes of this entity after `version` may be lost": resubscribe

and one address, `ConnAddress` (gateway id, connection id), for a connection wherever it is named.

On the stream (actors/channel.py) a frame is a msgpack list of items, each a list with a one-letter
tag: gateway -> host ["c", token, <command>]; host -> gateway ["r", token, version, payload, error],
["p", ...push fields], ["g", key, version]. An error travels in its own field as
[code, message, details], never as a msgpack extension type: the channel decoder refuses every
extension type, so nothing a client sends can be turned into an object on the other side (one
forged ExtType used to become an exception in the host's frame reader and close the stream for
every client of that gateway).

Decoding is total: malformed input raises WireError (a SyncopateError, MALFORMED_FRAME), never
another exception, and the stream that carried it is closed by its reader. Only plain values
(None, bool, int, float, str, bytes, list, dict with str keys) come out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, NamedTuple, Protocol

import msgpack

from actors.entity import Command, Principal
from protocols.errors import ErrorCode, SyncopateError

MAX_FRAME = 64 << 20          # one channel frame (a batch); the host bounds what it buffers per gateway


class WireError(SyncopateError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.MALFORMED_FRAME, message)


class ConnAddress(NamedTuple):
    """One client connection: the gateway that holds it and its id there. Connection ids are unique
    across gateway restarts (gateway/hub.py), so a stale address never reaches someone else's new
    socket; a push addressed to a connection is also checked against the connection's user."""
    gateway: str
    conn: str

    def __str__(self) -> str:
        return f"{self.gateway}/{self.conn}"

    @classmethod
    def parse(cls, value: Any) -> "ConnAddress":
        """From any of the stored forms: "gw/conn", "conn:gw/conn", [gw, conn]."""
        if isinstance(value, ConnAddress):
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) \
                and isinstance(value[1], str):        # (not all() over a generator: once per command)
            return cls(value[0], value[1])
        if isinstance(value, str):
            s = value[5:] if value.startswith("conn:") else value
            gw, sep, conn = s.partition("/")
            if sep and gw and conn:
                return cls(gw, conn)
        raise WireError(f"not a connection address: {value!r}")


@dataclass(slots=True)
class Reply:
    """The answer to one command. `error` set: refused (payload None). Otherwise `payload` is the
    reply and `version` the entity version it reflects."""
    version: int = 0
    payload: Any = None
    error: SyncopateError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def fail(cls, err: SyncopateError) -> "Reply":
        return cls(0, None, err)


@dataclass(slots=True)
class Push:
    """An entity's event for its subscribers. `user`: only that user's connections; `conn`: only that
    connection (and only if it belongs to `user` when both are set); `close`: close the addressed
    connections after delivering (sign-out). `fresh`: this push announces version `version` (a
    committed change), so a subscriber that has version-1 applies it and one that has less has a gap;
    a push that is not fresh re-sends state of an existing version (relay, awareness)."""
    key: str
    version: int
    type: str
    payload: Any = None
    user: str | None = None
    conn: ConnAddress | None = None
    close: bool = False
    fresh: bool = False
    prev: int = -1        # fresh pushes: the version of the host's previous fresh push of this entity
                          # to its subscribers (-1: unknown); a member whose watermark is below it
                          # missed something and is resubscribed (gateway/subscriptions.py)


@dataclass(slots=True)
class Gap:
    """The host cannot say whether pushes after `version` reached this gateway (a commit whose outcome
    is unknown, an entity evicted with changes in flight). The gateway resubscribes every local
    subscriber of `key` from its own watermark: it gets the missed changes or a resync, never a gap."""
    key: str
    version: int


HostItem = tuple  # ("r", token, Reply) | Push | Gap, as produced by the host for one gateway


class Transport(Protocol):
    """The gateway's way to its hosts (gateway/stream_transport.py over TCP; tests use in-process ones)."""
    n_hosts: int

    def send(self, host: int, requests: list[tuple[int, Command]]) -> Awaitable[None] | None:
        """Hand a batch to host `host`; raises (or returns an awaitable that raises) if it could not."""

    async def ping(self, host: int) -> str:
        """The host's incarnation id; raises when the host is unreachable."""


# -- errors ------------------------------------------------------------------------------------------
def error_to_wire(err: SyncopateError) -> list:
    return [err.code.value, err.message, err.details or None]


def error_from_wire(w: Any) -> SyncopateError:
    if not isinstance(w, list) or len(w) != 3 or not isinstance(w[1], str):
        raise WireError("bad error field")
    try:
        code = ErrorCode(w[0])
    except ValueError:
        code = ErrorCode.INTERNAL
    details = w[2] if isinstance(w[2], dict) else {}
    return SyncopateError(code, w[1], **{str(k): v for k, v in details.items()})


# -- commands ----------------------------------------------------------------------------------------
def command_to_wire(cmd: Command) -> list:
    p = cmd.principal
    return [cmd.kind, cmd.entity_id, cmd.op, cmd.args, [p.user_id, p.product, p.device_id, p.system, p.issued_at],
            cmd.op_id, list(cmd.origin) if cmd.origin else None, cmd.follow]


def _str(v: Any, what: str, *, optional: bool = False, limit: int = 1024) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise WireError(f"{what} must be a string")
    return v


# The principals of recent commands, by their fields: a frozen dataclass's __init__ (a setattr per
# field) was half of command_from_wire, once per command; a principal is immutable, so one object
# serves every command of its sender. Cleared when full.
_principals: dict[tuple, Principal] = {}
_PRINCIPALS_KEPT = 8192


def command_from_wire(w: Any) -> Command:
    if not isinstance(w, list) or len(w) != 8:
        raise WireError("a command is a list of 8 fields")
    kind, eid, op, args, p, op_id, origin, follow = w
    if not isinstance(args, dict) or not isinstance(p, list) or len(p) != 5:
        raise WireError("bad command fields")
    if not isinstance(p[4], int) or isinstance(p[4], bool):
        raise WireError("bad principal")
    key = (_str(p[0], "user"), _str(p[1], "product"), _str(p[2], "device", optional=True), p[3] is True, p[4])
    principal = _principals.get(key)
    if principal is None:
        if len(_principals) >= _PRINCIPALS_KEPT:
            _principals.clear()
        principal = _principals[key] = Principal(*key)
    return Command(_str(kind, "kind"), _str(eid, "entity id"), _str(op, "op"), args, principal,
                   op_id=_str(op_id, "op id", optional=True),
                   origin=ConnAddress.parse(origin) if origin is not None else None, follow=follow is True)


# -- host items --------------------------------------------------------------------------------------
def answer(token: int, reply: Reply) -> tuple:
    return ("r", token, reply)


def host_item_to_wire(item: Any) -> list:
    if isinstance(item, Push):
        return ["p", item.key, item.version, item.type, item.payload, item.user,
                list(item.conn) if item.conn else None, item.close, item.fresh, item.prev]
    if isinstance(item, Gap):
        return ["g", item.key, item.version]
    _, token, reply = item
    return ["r", token, reply.version, None if reply.error else reply.payload,
            error_to_wire(reply.error) if reply.error else None]


def host_item_from_wire(w: Any) -> Any:
    if not isinstance(w, list) or not w:
        raise WireError("bad item")
    tag = w[0]
    if tag == "r" and len(w) == 5:
        _, token, version, payload, err = w
        if not isinstance(version, int):
            raise WireError("bad reply version")
        return ("r", token, Reply(version, payload, error_from_wire(err) if err is not None else None))
    if tag == "p" and len(w) == 10:
        _, key, version, mtype, payload, user, conn, close, fresh, prev = w
        if not isinstance(version, int) or not isinstance(mtype, str) or not isinstance(key, str) \
                or not isinstance(prev, int):
            raise WireError("bad push")
        return Push(key, version, mtype, payload, _str(user, "user", optional=True),
                    ConnAddress.parse(conn) if conn is not None else None, close is True, fresh is True, prev)
    if tag == "g" and len(w) == 3 and isinstance(w[1], str) and isinstance(w[2], int):
        return Gap(w[1], w[2])
    raise WireError(f"unknown item {tag!r}")


# -- frames --------------------------------------------------------------------------------------------
def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} can't cross the channel")


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"extension type {code} on the channel")


_PACKER = msgpack.Packer(use_bin_type=True, default=_default)


def pack_body(obj: Any) -> bytes:
    # One Packer, reused (msgpack.packb builds a new one per call: measurable per item on the hot
    # path). Single-threaded use only: every caller is on its process's event loop.
    try:
        return _PACKER.pack(obj)
    except BaseException:
        _PACKER.reset()              # nothing half-packed may prefix the next frame
        raise


class Forged:
    """What a msgpack extension type decodes to in a command frame: a marker, never a value. A frame
    that holds one is looked at command by command (`unpack_commands`), and a command that holds one
    is refused for its token alone."""
    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


def unpack_commands(body: bytes) -> tuple[Any, bool]:
    """A gateway -> host frame: (the decoded frame, whether it held an extension type anywhere). One
    decode for the whole frame; only a forged frame (never one a correct gateway sends: every client
    value passed protocols/decode.py) pays for a search of its commands."""
    seen: list[int] = []

    def hook(code: int, data: bytes) -> Forged:
        seen.append(code)
        return Forged(code)

    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=hook, timestamp=2)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise WireError(f"undecodable channel frame: {type(exc).__name__}") from None
    return frame, bool(seen)


def holds_forged(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is Forged:
            return True
        if t is list:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.values())
            stack.extend(v.keys())
    return False


def unpack_body(body: bytes) -> Any:
    try:
        # timestamp=2: msgpack's Timestamp extension (-1) bypasses ext_hook; as an int it is a plain value
        return msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=_refuse_ext, timestamp=2)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed input
        raise WireError(f"undecodable channel frame: {type(exc).__name__}") from None
