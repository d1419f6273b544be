"""Command arguments: the one schema language of every entity's ops, and one code per mistake.

  missing (when required), wrong type, malformed           -> INVALID_FIELD
  well-typed but out of range, or not one of the choices   -> BAD_REQUEST
  (uris: malformed -> INVALID_URI, unknown -> UNKNOWN_URI, catalog.require)

An op declares its simple arguments once (actors/entity.py `@op(..., args={...})`); `Entity.handle`
parses them before the op runs, so the op reads checked values (`a["limit"]`) and anything it did
not declare as sent (`a.get("offset")`). Arguments whose range depends on the state (a position in
a playlist of n entries) are checked in the op with the same functions (`int_arg` and friends).

Coercions are the same everywhere: an integer may come as an integral float (5.0: a JSON number is
a number), a boolean as "true" / "false" (documented for `shuffle`, as Spotify's query string spells
it). Nothing else is coerced: a bool is not an integer, and "5" is a string (the REST handlers parse
their query strings before they call an entity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.errors import ErrorCode, SyncopateError

def invalid(message: str, **details) -> SyncopateError:
    return SyncopateError(ErrorCode.INVALID_FIELD, message, **details)


def out_of_range(message: str, **details) -> SyncopateError:
    return SyncopateError(ErrorCode.BAD_REQUEST, message, **details)


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def int_arg(args: dict, name: str, *, required: bool = False, default: int | None = None,
            lo: int | None = None, hi: int | None = None) -> int | None:
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise invalid(f"{name} must be an integer")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise out_of_range(f"{name} must be {_range(lo, hi)}, got {v}")
    return v


def str_arg(args: dict, name: str, *, required: bool = False, default: str | None = None,
            max_len: int = 128) -> str | None:
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return default
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise invalid(f"{name} must be a string of 1 to {max_len} characters")
    return v


def bool_arg(args: dict, name: str, *, required: bool = False, default: bool | None = None) -> bool | None:
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return default
    if isinstance(v, str) and v.lower() in ("true", "false"):   # REST query strings
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise invalid(f"{name} must be true or false")
    return v


def choice_arg(args: dict, name: str, choices: tuple, *, required: bool = False, default: Any = None) -> Any:
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return default
    if v not in choices:
        raise out_of_range(f"{name} must be one of {', '.join(map(str, choices))}")
    return v


def list_arg(v: Any, name: str) -> list:
    """A list, or a comma-separated string (REST `?ids=a,b`)."""
    if isinstance(v, str):
        return [s for s in (p.strip() for p in v.split(",")) if s]
    if not isinstance(v, (list, tuple)):
        raise invalid(f"{name} must be a list")
    return list(v)


# -- the schema: one field per declared argument ------------------------------------------------
@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None
    required: bool = False
    default: int | None = None

    def parse(self, args: dict, name: str) -> int | None:
        return int_arg(args, name, required=self.required, default=self.default, lo=self.lo, hi=self.hi)

    def describe(self) -> str:
        rng = "" if self.lo is None and self.hi is None else f" {_range(self.lo, self.hi)}"
        return f"int{rng}"


@dataclass(frozen=True)
class Str:
    max_len: int = 128
    required: bool = False
    default: str | None = None

    def parse(self, args: dict, name: str) -> str | None:
        return str_arg(args, name, required=self.required, default=self.default, max_len=self.max_len)

    def describe(self) -> str:
        return f"string (1..{self.max_len})"


@dataclass(frozen=True)
class Bool:
    required: bool = False
    default: bool | None = None

    def parse(self, args: dict, name: str) -> bool | None:
        return bool_arg(args, name, required=self.required, default=self.default)

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True)
class Choice:
    choices: tuple = ()
    required: bool = False
    default: Any = None

    def parse(self, args: dict, name: str) -> Any:
        return choice_arg(args, name, self.choices, required=self.required, default=self.default)

    def describe(self) -> str:
        return " | ".join(map(str, self.choices))


Field = Any      # Int | Str | Bool | Choice | Conn: anything with parse(args, name) and describe()


class Args(dict):
    """The command's arguments with every declared one parsed (absent ones at their default);
    `role` is what the entity's `authorize` resolved for the sender (e.g. a playlist's "editor")."""
    role: str | None = None


def parse(schema: dict[str, Field] | None, raw: dict) -> Args:
    """Check and convert the declared arguments, in declaration order (the first mistake wins)."""
    a = Args(raw)
    for name, f in (schema or {}).items():
        a[name] = f.parse(raw, name)
    return a


def address(value: Any):
    """A connection address from any stored form, or None when `value` is none."""
    from protocols.wire import ConnAddress, WireError      # wire imports the entity contract
    try:
        return ConnAddress.parse(value)
    except WireError:
        return None


def uri_arg(args: dict, name: str, kind: str, *, required: bool = False) -> str | None:
    """A `kind` uri's shape (INVALID_URI); whether the catalog holds it is catalog.require's."""
    from protocols.uris import parse_uri
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if not isinstance(v, str):
        raise SyncopateError(ErrorCode.INVALID_URI, f"{name} must be a Spotify {kind} uri")
    parse_uri(v, kind)
    return v


def conn_arg(args: dict, name: str, *, required: bool = False):
    """A connection address (protocols.wire.ConnAddress) in any stored form: "gw/conn", [gw, conn]."""
    from protocols.wire import ConnAddress, WireError      # wire imports the entity contract
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if isinstance(v, str) and len(v) > 200:
        raise invalid(f"{name} must be a connection address \"<gateway>/<connection>\"")
    try:
        return ConnAddress.parse(v)
    except WireError:
        raise invalid(f"{name} must be a connection address \"<gateway>/<connection>\"") from None


@dataclass(frozen=True)
class Conn:
    required: bool = False

    def parse(self, args: dict, name: str):
        return conn_arg(args, name, required=self.required)

    def describe(self) -> str:
        return "connection address"


@dataclass(frozen=True)
class Uri:
    kind: str = "track"
    required: bool = False

    def parse(self, args: dict, name: str) -> str | None:
        return uri_arg(args, name, self.kind, required=self.required)

    def describe(self) -> str:
        return f"{self.kind} uri"
