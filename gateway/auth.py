"""Bearer tokens: HS256 JWTs signed with the server's secret, with an expiry.

Claims: sub (user id), product ("premium" | "free"), sid (optional device/session id), iat, exp,
scope (Spotify's space-separated scope names, gateway/scopes.py), cid (the OAuth client it was
issued to), app (true for an app-only client-credentials token: no user), op (true for an
operator token, which only the /admin API accepts). A token without a `scope` claim (minted before
scopes existed) carries every scope, like the tokens `syncopate token` mints.
The secret lives in `<data-dir>/secret.key` (created with 0600 on first use) unless another file
is named (`--secret-file`), so `syncopate token USER --data-dir DIR` mints tokens a server on the
same data dir accepts. The host channel's secret is a different key, `<data-dir>/channel.key`
(actors/channel_auth.py): a leaked token key must not also open the hosts, and back.

Secrets are only ever passed around as file paths: not on command lines (visible in `ps`) and
not in Ray actor arguments (kept in Ray's GCS and shown by its tools).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from dataclasses import dataclass

import jwt

from actors.channel_auth import read_key_file
from actors.entity import Principal
from gateway.scopes import ALL_SCOPES, parse_scope, scope_string
from protocols.errors import ErrorCode, SyncopateError

ALGORITHM = "HS256"
DEFAULT_TTL_S = 3600
PRODUCTS = ("premium", "free")
MAX_TTL_S = 30 * 86400     # the longest token lifetime accepted
SECRET_FILE = "secret.key"          # token signing key, in the data dir
CHANNEL_SECRET_FILE = "channel.key"  # host channel key, in the data dir
CLOCK_LEEWAY_S = 5          # tolerated clock skew between the machines that mint and check tokens


def write_secret(path: str | Path, value: str | None = None) -> Path:
    """Create a secret file readable by its owner only (0600); an existing file is an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = value or secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    return path


def secret_path(data_dir: str | Path, path: str | Path | None = None, name: str = SECRET_FILE) -> Path:
    """The absolute path of a secret file: `path` if given (it must exist), else `<data-dir>/name`,
    created on first use."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no secret file {p}")
        return p.resolve()
    p = Path(data_dir) / name
    if not p.exists():
        try:
            write_secret(p)
        except FileExistsError:          # another process created it first: use theirs
            pass
    return p.resolve()


def read_secret(path: str | Path) -> str:
    return read_key_file(path)


def load_secret(data_dir: str | Path, path: str | Path | None = None, name: str = SECRET_FILE) -> str:
    return read_secret(secret_path(data_dir, path, name))


@dataclass(frozen=True)
class TokenPrincipal(Principal):
    """A Principal plus what the gateway alone needs: the token's scopes and client. Hosts get the
    plain Principal fields (protocols/wire.py packs those only)."""
    scopes: frozenset = ALL_SCOPES
    client_id: str | None = None
    app_only: bool = False
    operator: bool = False


APP_PREFIX = "@app:"            # sub of an app-only token: never a user id (those start with a letter/digit)
OPERATOR = "@operator"


class Auth:
    def __init__(self, secret: str) -> None:
        if len(secret.encode()) < 32:       # RFC 7518 3.2: an HS256 key of at least 256 bits
            raise ValueError("the signing secret must be at least 32 bytes")
        self._secret = secret

    def derived_key(self, purpose: bytes) -> bytes:
        """A key for another purpose than signing tokens (HMAC-SHA256 of the purpose under the
        signing secret): e.g. the pseudonyms of deleted users (gateway/erasure.py)."""
        return hmac.new(self._secret.encode(), purpose, hashlib.sha256).digest()

    def mint(self, user_id: str, *, product: str = "premium", ttl_s: int = DEFAULT_TTL_S,
             device_id: str | None = None, now: float | None = None, scope=ALL_SCOPES,
             client_id: str | None = None) -> str:
        """A user's access token; `scope` (a set of scope names) defaults to every scope."""
        if product not in PRODUCTS:
            raise ValueError(f"product must be one of {PRODUCTS}")
        if not user_id or len(user_id) > 64 or user_id.startswith("@"):
            raise ValueError("user id must be 1 to 64 characters, not starting with '@'")
        claims = {"sub": user_id, "product": product, "scope": scope_string(scope)}
        if device_id:
            claims["sid"] = device_id
        if client_id:
            claims["cid"] = client_id
        return self._encode(claims, ttl_s, now)

    def mint_app(self, client_id: str, *, ttl_s: int = DEFAULT_TTL_S, now: float | None = None) -> str:
        """An app-only token (client credentials): catalog and public reads, no user, no scope."""
        return self._encode({"sub": APP_PREFIX + client_id, "app": True, "cid": client_id, "scope": ""}, ttl_s, now)

    def mint_operator(self, *, ttl_s: int = 120, now: float | None = None) -> str:
        """A short-lived token for the /admin API (syncopate user|app ...): only whoever can read the
        signing key can mint it, and that key already mints any user's token."""
        return self._encode({"sub": OPERATOR, "op": True, "scope": ""}, ttl_s, now)

    def _encode(self, claims: dict, ttl_s: int, now: float | None) -> str:
        now = time.time() if now is None else now
        claims.update(iat=int(now), exp=int(now + ttl_s), jti=secrets.token_urlsafe(9))   # jti: each token unique
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "no bearer token")
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], leeway=CLOCK_LEEWAY_S,
                                options={"require": ["sub", "exp"]})
        except jwt.ExpiredSignatureError:
            raise SyncopateError(ErrorCode.TOKEN_EXPIRED, "the access token expired") from None
        except jwt.PyJWTError:
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "invalid access token") from None
        if int(claims["exp"]) - int(claims.get("iat", claims["exp"])) > MAX_TTL_S:
            # the gateways forget sign-outs older than this (gateway/context.py): refuse longer lives
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "the access token lives longer than 30 days")
        product = claims.get("product", "premium")
        sub = claims["sub"]
        if product not in PRODUCTS or not isinstance(sub, str):
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "invalid access token")
        app_only, operator = claims.get("app") is True, claims.get("op") is True
        if sub.startswith("@") and not ((app_only and sub.startswith(APP_PREFIX)) or (operator and sub == OPERATOR)):
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "invalid access token")
        try:
            scopes = ALL_SCOPES if "scope" not in claims else parse_scope(claims["scope"])
        except (ValueError, AttributeError, TypeError):
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "invalid access token") from None
        cid = claims.get("cid")
        return TokenPrincipal(user_id=sub, product=product, device_id=claims.get("sid"),
                              issued_at=int(claims.get("iat", 0)), expires_at=int(claims["exp"]),
                              scopes=scopes, client_id=cid if isinstance(cid, str) else None,
                              app_only=app_only, operator=operator)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
