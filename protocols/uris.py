"""Spotify ids and uris: `spotify:<type>:<22 base62>`."""
from __future__ import annotations

import re

from protocols.errors import ErrorCode, SyncopateError

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID = re.compile(r"^[0-9A-Za-z]{22}$")
_URI = re.compile(r"^spotify:(track|album|artist|playlist|episode|show|user):([0-9A-Za-z]{22}|[A-Za-z0-9._-]{1,64})$")


def is_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID.match(value))


def parse_uri(uri: object, expect: str | tuple[str, ...] | None = None) -> tuple[str, str]:
    """Split a uri into (type, id); a malformed uri (or the wrong type) is INVALID_URI."""
    if not isinstance(uri, str):
        raise SyncopateError(ErrorCode.INVALID_URI, f"not a Spotify uri: {uri!r}")
    m = _URI.match(uri)
    if not m:
        raise SyncopateError(ErrorCode.INVALID_URI, f"not a Spotify uri: {uri!r}")
    kind, ident = m.group(1), m.group(2)
    if kind != "user" and not _ID.match(ident):
        raise SyncopateError(ErrorCode.INVALID_URI, f"not a Spotify uri: {uri!r}")
    if expect is not None:
        allowed = (expect,) if isinstance(expect, str) else expect
        if kind not in allowed:
            raise SyncopateError(ErrorCode.INVALID_URI, f"expected a {'/'.join(allowed)} uri, got {uri!r}")
    return kind, ident


def new_id() -> str:
    """A random 22-character base62 id, like Spotify's."""
    import secrets
    return "".join(secrets.choice(BASE62) for _ in range(22))


def keyed_id(user_id: str, key: str) -> str:
    """The id a create carrying an idempotency key gets: derived from (user, key), so a retry
    reaches the same entity, whose op-id memory answers it with the first answer instead of
    creating a second one (op ids are remembered per entity)."""
    import hashlib
    n = int.from_bytes(hashlib.blake2b(f"{user_id}\x00{key}".encode(), digest_size=17,
                                       person=b"syncopate-pl").digest(), "big")
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(out)


def make_uri(kind: str, ident: str) -> str:
    return f"spotify:{kind}:{ident}"


def require_id(value: object, what: str = "id") -> str:
    if not is_id(value):
        raise SyncopateError(ErrorCode.INVALID_URI, f"invalid {what}: {value!r}")
    return value  # type: ignore[return-value]
