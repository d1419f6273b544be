"""Accounts, registered client apps and their directories: entities like every other (pure, no I/O).

- `AccountEntity` (kind `account`, id = user id): the profile (display name, country, product,
  email, created), the password's KDF record, the authorization codes issued for the user and the
  refresh-token families (docs/oauth.md). Every change is a record through the host's write path.
- `AppEntity` (kind `app`, id = client id): a registered client: name, exact redirect URIs,
  public (PKCE only) or confidential (the SHA-256 of its client secret).
- `DirectoryEntity` (kind `directory`, ids `users` and `apps`): the ids created, for operators'
  listings; fed by an effect of each create (the durable outbox), so it converges.

Secrets never enter an entity in the clear: the gateway hashes codes, refresh tokens and client
secrets (SHA-256 of 256-bit random values) and passwords (scrypt, computed by the tool that reads
the password). Comparisons are constant-time (hmac.compare_digest).

OAuth ops answer refusals in the reply, `{"ok": False, "error": "invalid_grant", ...}`, instead of
raising: a refusal that must change state (a replayed code or a reused rotated refresh token
revokes the whole family, RFC 6749 10.5 / OAuth 2.0 Security BCP 4.14) needs its records committed.
A refusal that changes nothing carries no records.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from actors.entity import Command, Entity, Outcome
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP, SESSION

ACCOUNT = "account"
APP = "app"
DIRECTORY = "directory"

USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9]{16,64}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
PRODUCTS = ("premium", "free")
DEFAULT_COUNTRY = "US"             # an account's country unless given; a user without an account's too
CODE_TTL_MS = 10 * 60_000          # an authorization code lives ten minutes
MAX_CODES = 32                     # outstanding codes per account (oldest dropped)
MAX_FAMILIES = 64                  # refresh-token families per account (oldest dropped)
PREVIOUS_KEPT = 16                 # rotated refresh tokens remembered per family (reuse detection)
MAX_REDIRECT_URIS = 10
KDF_NAMES = ("scrypt", "pbkdf2_sha256")


def _err(message: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> SyncopateError:
    return SyncopateError(code, message)


def _refuse(error: str, description: str, records: list | None = None) -> Outcome:
    return Outcome(reply={"ok": False, "error": error, "error_description": description}, records=records or [])


def _system(cmd: Command) -> None:
    if not cmd.principal.system:
        raise _err(f"{cmd.op} is an internal operation", ErrorCode.FORBIDDEN)


def _hex64(args: dict, name: str) -> str:
    v = args.get(name)
    if not isinstance(v, str) or not HEX64_RE.match(v):
        raise _err(f"{name} must be a SHA-256 hex digest")
    return v


def s256(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def hash_password(password: str, salt: bytes) -> dict:
    """The KDF record of a password (scrypt, RFC 7914; n=2^15, r=8, p=1: 32 MiB, ~0.1 s here)."""
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        raise ValueError("a password is 8 to 1024 characters")
    params = {"n": 2 ** 15, "r": 8, "p": 1}
    dk = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 << 20, dklen=32, **params)
    return {"kdf": "scrypt", "salt": salt.hex(), "hash": dk.hex(), "params": params}


def verify_password(password: str, rec: dict | None) -> bool:
    """Constant-time check of `password` against a KDF record (None: no password set -> False,
    after the same work, so timing does not tell whether an account has a password)."""
    if rec is None:
        rec = {"kdf": "scrypt", "salt": "00" * 16, "hash": "00" * 32, "params": {"n": 2 ** 15, "r": 8, "p": 1}}
        password, ok = "", False
    else:
        ok = True
    salt, want, prm = bytes.fromhex(rec["salt"]), bytes.fromhex(rec["hash"]), rec["params"]
    pw = password.encode()
    if rec["kdf"] == "scrypt":
        got = hashlib.scrypt(pw, salt=salt, n=prm["n"], r=prm["r"], p=prm["p"], maxmem=256 << 20, dklen=len(want))
    else:
        got = hashlib.pbkdf2_hmac("sha256", pw, salt, prm["iterations"], dklen=len(want))
    return hmac.compare_digest(got, want) and ok


def check_password_record(rec: Any) -> dict:
    """A KDF record as the CLI builds it (syncopate/cli.py: hash_password)."""
    if not isinstance(rec, dict) or rec.get("kdf") not in KDF_NAMES:
        raise _err(f"password_hash.kdf must be one of {KDF_NAMES}")
    salt, dk = rec.get("salt"), rec.get("hash")
    if not (isinstance(salt, str) and re.fullmatch(r"[0-9a-f]{32,128}", salt)
            and isinstance(dk, str) and re.fullmatch(r"[0-9a-f]{64,128}", dk)):
        raise _err("password_hash needs a hex salt (16-64 bytes) and a hex hash (32-64 bytes)")
    params = rec.get("params")
    if rec["kdf"] == "scrypt":
        ok = isinstance(params, dict) and all(isinstance(params.get(k), int) for k in ("n", "r", "p")) \
            and 2 ** 14 <= params["n"] <= 2 ** 20 and params["n"] & (params["n"] - 1) == 0 \
            and 1 <= params["r"] <= 16 and 1 <= params["p"] <= 4
    else:
        ok = isinstance(params, dict) and isinstance(params.get("iterations"), int) \
            and 200_000 <= params["iterations"] <= 5_000_000
    if not ok:
        raise _err("password_hash.params are out of range")
    return {"kdf": rec["kdf"], "salt": salt, "hash": dk, "params": dict(params)}


def _profile_fields(args: dict, *, create: bool) -> dict:
    out: dict = {}
    if "display_name" in args or create:
        v = args.get("display_name")
        if v is not None and (not isinstance(v, str) or not 0 < len(v) <= 100):
            raise _err("display_name must be 1 to 100 characters")
        out["display_name"] = v
    if "country" in args or create:
        v = args.get("country", DEFAULT_COUNTRY)
        if not isinstance(v, str) or not COUNTRY_RE.match(v):
            raise _err("country must be an ISO 3166-1 alpha-2 code (e.g. SE)")
        out["country"] = v
    if "product" in args or create:
        v = args.get("product", "premium")
        if v not in PRODUCTS:
            raise _err(f"product must be one of {PRODUCTS}")
        out["product"] = v
    if "email" in args or create:
        v = args.get("email")
        if v is not None and (not isinstance(v, str) or not EMAIL_RE.match(v)):
            raise _err("email must look like name@example.com")
        out["email"] = v
    if "explicit_content" in args or create:
        # Spotify's {filter_enabled, filter_locked}: with the filter on, explicit tracks do not play
        # (docs/rights.md "Explicit content"). Set by the operator (Spotify's Web API has no route for it).
        v = args.get("explicit_content", {"filter_enabled": False, "filter_locked": False})
        if not isinstance(v, dict) or set(v) != {"filter_enabled", "filter_locked"} \
                or not all(isinstance(x, bool) for x in v.values()):
            raise _err("explicit_content must be {filter_enabled: bool, filter_locked: bool}")
        out["explicit_content"] = dict(v)
    return out


class AccountEntity(Entity):
    kind = ACCOUNT
    snapshot_every = 200

    def __init__(self, entity_id, env) -> None:
        super().__init__(entity_id, env)
        self.profile: dict | None = None          # None: no such account
        self.password: dict | None = None
        self.codes: dict[str, dict] = {}          # code hash -> {client_id, redirect_uri, scope, challenge, exp, used}
        self.families: dict[str, dict] = {}       # family id -> {client_id, scope, current, previous, created, revoked}

    # -- dispatch --------------------------------------------------------------------------------
    def handle(self, cmd: Command) -> Outcome:
        fn = self._OPS.get(cmd.op)
        if fn is None:
            raise _err(f"account has no op {cmd.op!r}", ErrorCode.UNKNOWN_MESSAGE_TYPE)
        if cmd.op not in ("profile", "me", "export", "market"):
            _system(cmd)
        args = cmd.args if isinstance(cmd.args, dict) else {}
        return fn(self, cmd, args)

    def _exists(self) -> None:
        if self.profile is None:
            raise _err(f"no user {self.id}", ErrorCode.NOT_FOUND)

    # -- profile ---------------------------------------------------------------------------------
    def _op_create(self, cmd: Command, args: dict) -> Outcome:
        if not USER_ID_RE.match(self.id):
            raise _err("a user id is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if self.profile is not None:
            raise _err(f"user {self.id} exists", ErrorCode.CONFLICT)
        fields = _profile_fields(args, create=True)
        fields["created_ms"] = cmd.now_ms
        recs: list = [["set", fields]]
        if args.get("password_hash") is not None:
            recs.append(["pw", check_password_record(args["password_hash"])])
        for r in recs:
            self.apply(r)
        return Outcome(reply=self._me(), records=recs,
                       effects=[Command(DIRECTORY, "users", "add", {"id": self.id},
                                        op_id=f"{self.key}@{self.version + 1}:dir"),
                                self._market_changed()])

    def _op_update(self, cmd: Command, args: dict) -> Outcome:
        self._exists()
        fields = _profile_fields(args, create=False)
        recs: list = [["set", fields]] if fields else []
        if args.get("password_hash") is not None:
            recs.append(["pw", check_password_record(args["password_hash"])])
        if not recs:
            raise _err("nothing to change")
        before, facts = self.profile.get("product"), self._facts()
        for r in recs:
            self.apply(r)
        effects = []
        if self._facts() != facts:
            effects.append(self._market_changed())
        if self.profile.get("product") != before:
            # live authorization: the user's open sockets take the new product at once (the session
            # entity pushes it to them); tokens minted from here on carry it too
            effects.append(Command(SESSION, self.id, "product_changed", {"product": self.profile["product"]},
                                   op_id=f"{self.key}@{self.version + 1}:product"))
        return Outcome(reply=self._me(), records=recs, effects=effects)

    def _facts(self) -> dict:
        """What the user's device group plays by (docs/rights.md "The account facts a device group
        holds"): the country and the explicit content filter; a user without an account is
        DEFAULT_COUNTRY, filter off, as /v1/me answers (a profile from before the filter: off)."""
        p = self.profile
        if p is None:
            return {"country": DEFAULT_COUNTRY, "explicit_filter": False}
        return {"country": p["country"],
                "explicit_filter": bool((p.get("explicit_content") or {}).get("filter_enabled", False))}

    def _market_changed(self) -> Command:
        """The user's device group plays by the account's country and explicit content filter:
        told both with the version of the entry that set them (`as_of`), so the group keeps the
        newest of its notices (one order for both facts)."""
        v = self.version + 1
        return Command(DEVICE_GROUP, self.id, "market_changed", {**self._facts(), "as_of": v},
                       op_id=f"{self.key}@{v}:market")

    def _op_market(self, cmd: Command, args: dict) -> Outcome:
        """The user's account facts, for their device group's ask (actors/devicegroup_market.py):
        the country and the explicit content filter as of this version."""
        if not (cmd.principal.system or cmd.principal.user_id == self.id):
            raise _err("a user reads only their own market", ErrorCode.FORBIDDEN)
        return Outcome(reply={**self._facts(), "as_of": self.version})

    def _op_me(self, cmd: Command, args: dict) -> Outcome:
        if not (cmd.principal.system or cmd.principal.user_id == self.id):
            raise _err("a user reads only their own private profile", ErrorCode.FORBIDDEN)
        self._exists()
        return Outcome(reply=self._me())

    def _op_export(self, cmd: Command, args: dict) -> Outcome:
        """Everything the account holds, for the user's data export (docs/data-rights.md): the
        profile, whether a password is set (never its KDF record) and the grants issued to apps
        (client, scope, dates; never token or code hashes, which are secrets' digests)."""
        if not (cmd.principal.system or cmd.principal.user_id == self.id):
            raise _err("a user exports only their own account", ErrorCode.FORBIDDEN)
        self._exists()
        return Outcome(reply={"profile": self._me(),
                              "grants": [{"client_id": f["client_id"], "scope": f["scope"], "created_ms": f["created"],
                                          "revoked": f["revoked"], "pkce": bool(f.get("pkce"))}
                                         for f in self.families.values()],
                              "pending_authorization_codes": sum(1 for c in self.codes.values()
                                                                 if c["used"] is None and c["exp"] > cmd.now_ms)})

    def _op_profile(self, cmd: Command, args: dict) -> Outcome:
        self._exists()
        return Outcome(reply={"id": self.id, "display_name": self.profile.get("display_name")})

    def _op_credentials(self, cmd: Command, args: dict) -> Outcome:
        """The password record (the gateway verifies it off the host); None when none is set."""
        self._exists()
        return Outcome(reply={"password_hash": self.password, "product": self.profile["product"]})

    def _me(self) -> dict:
        p = self.profile
        return {"id": self.id, "display_name": p.get("display_name"), "country": p["country"],
                "product": p["product"], "email": p.get("email"), "created_ms": p["created_ms"],
                "has_password": self.password is not None,
                # a profile made before the filter existed has it off
                "explicit_content": dict(p.get("explicit_content") or {"filter_enabled": False, "filter_locked": False})}

    # -- authorization codes -----------------------------------------------------------------------
    def _op_issue_code(self, cmd: Command, args: dict) -> Outcome:
        self._exists()
        code_hash = _hex64(args, "code_hash")
        info = {"client_id": args.get("client_id"), "redirect_uri": args.get("redirect_uri"),
                "scope": args.get("scope", ""), "challenge": args.get("code_challenge"),
                "exp": cmd.now_ms + CODE_TTL_MS, "used": None}
        if not all(isinstance(info[k], str) for k in ("client_id", "redirect_uri", "scope")) \
                or not (info["challenge"] is None or isinstance(info["challenge"], str)):
            raise _err("issue_code needs client_id, redirect_uri, scope (strings) and code_challenge (string or null)")
        if code_hash in self.codes:
            raise _err("code exists", ErrorCode.CONFLICT)
        rec = ["code", code_hash, info, cmd.now_ms]
        self.apply(rec)
        return Outcome(reply={"ok": True, "expires_ms": info["exp"]}, records=[rec])

    def _op_redeem_code(self, cmd: Command, args: dict) -> Outcome:
        """`{code_hash, client_id, redirect_uri, code_verifier?, family, token_hash}` -> the grant
        (scope, product, family) or a refusal. A code is used once: a second redemption revokes the
        family the first one started."""
        code_hash, token_hash = _hex64(args, "code_hash"), _hex64(args, "token_hash")
        fid = args.get("family")
        if not isinstance(fid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", fid):
            raise _err("family must be a random id")
        info = self.codes.get(code_hash)
        if self.profile is None or info is None or info["exp"] <= cmd.now_ms:
            return _refuse("invalid_grant", "Invalid authorization code")
        if info["used"] is not None:
            fam = self.families.get(info["used"])
            if fam is not None and not fam["revoked"]:
                return _refuse("invalid_grant", "Invalid authorization code",
                               records=[self._record(["revoke", info["used"]])])
            return _refuse("invalid_grant", "Invalid authorization code")
        if not hmac.compare_digest(str(args.get("client_id", "")), info["client_id"]):
            return _refuse("invalid_grant", "Invalid authorization code")
        if args.get("client_authenticated") is not True and info["challenge"] is None:
            return _refuse("invalid_client", "Invalid client: a code issued without PKCE needs the client secret")
        if not hmac.compare_digest(str(args.get("redirect_uri", "")), info["redirect_uri"]):
            return _refuse("invalid_grant", "Invalid redirect URI")
        verifier = args.get("code_verifier")
        if info["challenge"] is not None:
            if not isinstance(verifier, str):
                return _refuse("invalid_request", "code_verifier required")
            if not hmac.compare_digest(s256(verifier), info["challenge"]):
                return _refuse("invalid_grant", "code_verifier was incorrect")
        elif verifier is not None:
            return _refuse("invalid_request", "code_verifier given for a code issued without code_challenge")
        if fid in self.families:
            raise _err("family exists", ErrorCode.CONFLICT)
        rec = self._record(["use", code_hash, fid, {"client_id": info["client_id"], "scope": info["scope"],
                                                    "current": token_hash, "previous": [],
                                                    "pkce": info["challenge"] is not None,
                                                    "created": cmd.now_ms, "revoked": False}])
        return Outcome(reply={"ok": True, "scope": info["scope"], "product": self.profile["product"],
                              "family": fid, "created": cmd.now_ms}, records=[rec])

    # -- refresh-token families --------------------------------------------------------------------
    def _op_refresh(self, cmd: Command, args: dict) -> Outcome:
        """`{family, token_hash, new_hash, client_id}`: rotate. The family's current token is
        exchanged for `new_hash`; presenting a rotated one revokes the family."""
        token_hash, new_hash = _hex64(args, "token_hash"), _hex64(args, "new_hash")
        fam = self.families.get(args.get("family")) if isinstance(args.get("family"), str) else None
        if self.profile is None or fam is None or fam["revoked"]:
            return _refuse("invalid_grant", "Invalid refresh token")
        if not hmac.compare_digest(str(args.get("client_id", "")), fam["client_id"]):
            return _refuse("invalid_grant", "Invalid refresh token")
        if args.get("client_authenticated") is not True and not fam.get("pkce"):
            return _refuse("invalid_client", "Invalid client: this grant needs the client secret")
        if not hmac.compare_digest(token_hash, fam["current"]):
            if any(hmac.compare_digest(token_hash, h) for h in fam["previous"]):
                return _refuse("invalid_grant", "Refresh token reused: every token of this grant is revoked",
                               records=[self._record(["revoke", args["family"]])])
            return _refuse("invalid_grant", "Invalid refresh token")
        rec = self._record(["rot", args["family"], new_hash])
        return Outcome(reply={"ok": True, "scope": fam["scope"], "product": self.profile["product"],
                              "family": args["family"], "created": fam["created"]}, records=[rec])

    def _op_revoke(self, cmd: Command, args: dict) -> Outcome:
        fid = args.get("family")
        fam = self.families.get(fid) if isinstance(fid, str) else None
        if fam is None or fam["revoked"]:
            return Outcome(reply={"revoked": False})
        return Outcome(reply={"revoked": True}, records=[self._record(["revoke", fid])])

    def _op_family(self, cmd: Command, args: dict) -> Outcome:
        fam = self.families.get(args.get("family")) if isinstance(args.get("family"), str) else None
        if fam is None:
            return Outcome(reply=None)
        return Outcome(reply={"client_id": fam["client_id"], "scope": fam["scope"], "revoked": fam["revoked"],
                              "created": fam["created"]})

    def _record(self, rec: list) -> list:
        self.apply(rec)
        return rec

    # -- persistence -----------------------------------------------------------------------------
    def apply(self, rec: Any) -> None:
        op = rec[0]
        if op == "set":
            self.profile = {**(self.profile or {}), **rec[1]}
        elif op == "pw":
            self.password = rec[1]
        elif op == "code":
            now = rec[3]
            self.codes = {h: c for h, c in self.codes.items() if c["exp"] > now}
            while len(self.codes) >= MAX_CODES:
                self.codes.pop(next(iter(self.codes)))
            self.codes[rec[1]] = dict(rec[2])
        elif op == "use":
            code = self.codes.get(rec[1])
            if code is not None:
                code["used"] = rec[2]
            while len(self.families) >= MAX_FAMILIES:
                dead = [f for f, v in self.families.items() if v["revoked"]]
                self.families.pop(dead[0] if dead else next(iter(self.families)))
            self.families[rec[2]] = {**rec[3], "previous": list(rec[3]["previous"])}
        elif op == "rot":
            fam = self.families[rec[1]]
            fam["previous"] = (fam["previous"] + [fam["current"]])[-PREVIOUS_KEPT:]
            fam["current"] = rec[2]
        elif op == "revoke":
            if rec[1] in self.families:
                self.families[rec[1]]["revoked"] = True

    def snapshot(self) -> Any:
        return {"profile": self.profile, "password": self.password, "codes": self.codes, "families": self.families}

    def restore(self, data: Any) -> None:
        self.profile, self.password = data["profile"], data["password"]
        self.codes, self.families = dict(data["codes"]), dict(data["families"])

    _OPS = {"create": _op_create, "update": _op_update, "me": _op_me, "profile": _op_profile, "export": _op_export,
            "market": _op_market,
            "credentials": _op_credentials, "issue_code": _op_issue_code, "redeem_code": _op_redeem_code,
            "refresh": _op_refresh, "revoke": _op_revoke, "family": _op_family}


def _redirect_uris(v: Any) -> list[str]:
    if not isinstance(v, list) or not 0 < len(v) <= MAX_REDIRECT_URIS:
        raise _err(f"redirect_uris must list 1 to {MAX_REDIRECT_URIS} URIs")
    for u in v:
        if not isinstance(u, str) or not 0 < len(u) <= 512 or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\s#]+$", u):
            raise _err(f"redirect URI {u!r} must be absolute, without a fragment")
    return list(dict.fromkeys(v))


class AppEntity(Entity):
    kind = APP

    def __init__(self, entity_id, env) -> None:
        super().__init__(entity_id, env)
        self.app: dict | None = None

    def handle(self, cmd: Command) -> Outcome:
        _system(cmd)
        args = cmd.args if isinstance(cmd.args, dict) else {}
        if cmd.op == "create":
            if not CLIENT_ID_RE.match(self.id):
                raise _err("a client id is 16 to 64 letters or digits")
            if self.app is not None:
                raise _err(f"app {self.id} exists", ErrorCode.CONFLICT)
            name = args.get("name")
            if not isinstance(name, str) or not 0 < len(name) <= 100:
                raise _err("name must be 1 to 100 characters")
            public = args.get("public") is True
            secret_hash = None if public else _hex64(args, "secret_hash")
            rec = ["app", {"name": name, "redirect_uris": _redirect_uris(args.get("redirect_uris")),
                           "public": public, "secret_hash": secret_hash, "created_ms": cmd.now_ms}]
            self.apply(rec)
            return Outcome(reply=self._public(), records=[rec],
                           effects=[Command(DIRECTORY, "apps", "add", {"id": self.id},
                                            op_id=f"{self.key}@{self.version + 1}:dir")])
        if self.app is None:
            raise _err(f"no app {self.id}", ErrorCode.NOT_FOUND)
        if cmd.op == "get":
            return Outcome(reply={**self._public(), "secret_hash": self.app["secret_hash"]})
        if cmd.op == "update":
            fields = {}
            if "redirect_uris" in args:
                fields["redirect_uris"] = _redirect_uris(args["redirect_uris"])
            if "name" in args:
                if not isinstance(args["name"], str) or not 0 < len(args["name"]) <= 100:
                    raise _err("name must be 1 to 100 characters")
                fields["name"] = args["name"]
            if not fields:
                raise _err("nothing to change")
            rec = ["app", fields]
            self.apply(rec)
            return Outcome(reply=self._public(), records=[rec])
        raise _err(f"app has no op {cmd.op!r}", ErrorCode.UNKNOWN_MESSAGE_TYPE)

    def _public(self) -> dict:
        a = self.app
        return {"client_id": self.id, "name": a["name"], "redirect_uris": list(a["redirect_uris"]),
                "public": a["public"], "created_ms": a["created_ms"]}

    def apply(self, rec: Any) -> None:
        self.app = {**(self.app or {}), **rec[1]}

    def snapshot(self) -> Any:
        return self.app

    def restore(self, data: Any) -> None:
        self.app = data


class DirectoryEntity(Entity):
    """The ids created of one kind (`users`, `apps`), in creation order."""
    kind = DIRECTORY
    snapshot_every = 100

    def __init__(self, entity_id, env) -> None:
        super().__init__(entity_id, env)
        self.ids: dict[str, None] = {}

    def handle(self, cmd: Command) -> Outcome:
        _system(cmd)
        args = cmd.args if isinstance(cmd.args, dict) else {}
        if cmd.op == "add":
            ident = args.get("id")
            if not isinstance(ident, str) or not 0 < len(ident) <= 64:
                raise _err("id must be 1 to 64 characters")
            if ident in self.ids:
                return Outcome(reply={"added": False})
            rec = ["add", ident]
            self.apply(rec)
            return Outcome(reply={"added": True}, records=[rec])
        if cmd.op == "remove":
            # an account deleted (docs/data-rights.md): the listing forgets it; the deletion then
            # compacts this entity so no log entry keeps the id either
            ident = args.get("id")
            if not isinstance(ident, str) or ident not in self.ids:
                return Outcome(reply={"removed": False})
            rec = ["del", ident]
            self.apply(rec)
            return Outcome(reply={"removed": True}, records=[rec])
        if cmd.op == "list":
            offset, limit = args.get("offset", 0), args.get("limit", 50)
            if not (isinstance(offset, int) and isinstance(limit, int) and offset >= 0 and 0 < limit <= 1000):
                raise _err("offset >= 0 and 1 <= limit <= 1000")
            ids = list(self.ids)
            return Outcome(reply={"ids": ids[offset:offset + limit], "total": len(ids)})
        raise _err(f"directory has no op {cmd.op!r}", ErrorCode.UNKNOWN_MESSAGE_TYPE)

    def apply(self, rec: Any) -> None:
        if rec[0] == "del":
            self.ids.pop(rec[1], None)
        else:
            self.ids[rec[1]] = None

    def snapshot(self) -> Any:
        return list(self.ids)

    def restore(self, data: Any) -> None:
        self.ids = dict.fromkeys(data)
