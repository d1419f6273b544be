"""OAuth 2.0 as Spotify's accounts service does it (docs/oauth.md), served by the gateway.

  GET  /authorize    the login + consent page (client_id, response_type=code, redirect_uri, state,
                     scope, show_dialog, code_challenge_method=S256, code_challenge)
  POST /authorize    the page's form: user id + password, allow / deny -> 302 to the redirect URI
                     with ?code=&state= or ?error=access_denied&state=
  POST /api/token    grant_type=authorization_code (with or without PKCE) | refresh_token |
                     client_credentials; errors are RFC 6749's {"error", "error_description"}, 400

State lives in entities (actors/account.py): codes and refresh-token families in the user's
`account`, client registrations in `app`. What travels is random (256 bits) and only its SHA-256
is stored. A code is `<user id, base64url>.<random>` and a refresh token
`<user id, base64url>.<family>.<random>`: the prefix routes it to the account that can check it.

Access tokens are the gateway's HS256 JWTs (gateway/auth.py) with the granted `scope`, bound to
the device `oauth-<family>`: signing that device out (DELETE /v1/me/sessions/oauth-<family>, or
`session.end`) refuses its access tokens at once and its refresh token from then on.

The web player (gateway/web.py) is a built-in public client, WEB_CLIENT_ID, whose one redirect URI
is the gateway's own origin + "/".
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import html
import re
import secrets
import uuid
from urllib.parse import urlencode

from aiohttp import web

from actors.account import ACCOUNT, APP, USER_ID_RE, verify_password
from gateway.auth import DEFAULT_TTL_S
from gateway.http import ctx
from gateway.ratelimit import TokenBucket
from gateway.scopes import parse_scope, scope_string
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import SESSION

WEB_CLIENT_ID = "syncopatewebplayer"
VERIFIER_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
CHALLENGE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")          # BASE64URL(SHA-256), unpadded
LOGIN_BURST, LOGIN_RATE = 10.0, 0.2                         # sign-in attempts per user: 10, then 1 per 5 s
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SCOPE_TEXT = {
    "user-read-private": "Read your subscription details and country", "user-read-email": "Read your email address",
    "user-read-playback-state": "Read what you play and on which device",
    "user-modify-playback-state": "Control playback on your devices",
    "user-read-currently-playing": "Read your currently playing content", "streaming": "Play content on this device",
    "app-remote-control": "Remote control playback", "playlist-read-private": "Read your private playlists",
    "playlist-read-collaborative": "Read your collaborative playlists",
    "playlist-modify-private": "Change your private playlists", "playlist-modify-public": "Change your public playlists",
    "user-library-read": "Read your library", "user-library-modify": "Change your library",
    "user-follow-read": "See whom you follow", "user-follow-modify": "Follow and unfollow for you",
    "user-read-recently-played": "Read what you played recently",
    "user-read-playback-position": "Read your position in content", "user-top-read": "Read your top artists and tracks",
    "ugc-image-upload": "Upload images",
    "user-data-rights": "Export all your data, and delete your account",
}
LOGIN_ATTEMPTS = web.AppKey("syncopate_login_attempts", dict)


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def setup(app: web.Application) -> None:
    app[LOGIN_ATTEMPTS] = {}
    app.router.add_get("/authorize", authorize_page)
    app.router.add_post("/authorize", authorize_submit)
    app.router.add_post("/api/token", token)


def _b64(s: str) -> str:
    return base64.urlsafe_b64encode(s.encode()).rstrip(b"=").decode()


def _unb64(s: str) -> str | None:
    try:
        uid = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return uid if USER_ID_RE.match(uid) else None


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def client_app(request: web.Request, client_id: str | None) -> dict | None:
    """The registered client (AppEntity's view), the built-in web player, or None."""
    if not client_id or len(client_id) > 64:
        return None
    if client_id == WEB_CLIENT_ID:
        return {"client_id": WEB_CLIENT_ID, "name": "Syncopate Web Player", "public": True, "secret_hash": None,
                "redirect_uris": [f"{request.scheme}://{request.host}/"]}
    if not re.fullmatch(r"[A-Za-z0-9]{16,64}", client_id):
        return None
    try:
        return await ctx(request).call(APP, client_id, "get", {})
    except SyncopateError as err:
        if err.code == ErrorCode.NOT_FOUND:
            return None
        raise


# == /authorize ====================================================================================

class _Bad(Exception):
    """A request that can't be sent back to the client (unknown client or redirect URI): an error page."""


async def _check_authorize(request: web.Request, q) -> dict:
    """Validated authorization request. Raises _Bad (no redirect) or OAuthError (redirected)."""
    app = await client_app(request, q.get("client_id"))
    if app is None:
        raise _Bad("INVALID_CLIENT: Invalid client")
    redirect = q.get("redirect_uri", "")
    if redirect not in app["redirect_uris"]:        # exact match, as registered
        raise _Bad("INVALID_CLIENT: Invalid redirect URI")
    req = {"client_id": app["client_id"], "app_name": app["name"], "redirect_uri": redirect,
           "state": q.get("state"), "public": app["public"]}
    if q.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "response_type must be code")
    try:
        req["scope"] = scope_string(parse_scope(q.get("scope")))
    except ValueError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    method, challenge = q.get("code_challenge_method"), q.get("code_challenge")
    if method is not None or challenge is not None:
        if method != "S256":
            raise OAuthError("invalid_request", "code_challenge_method must be S256")
        if not isinstance(challenge, str) or not CHALLENGE_RE.match(challenge):
            raise OAuthError("invalid_request", "code_challenge must be BASE64URL(SHA-256(code_verifier))")
    elif app["public"]:
        raise OAuthError("invalid_request", "a public client must use PKCE (code_challenge)")
    req["code_challenge"] = challenge
    return req


def _redirect(uri: str, params: dict) -> web.Response:
    params = {k: v for k, v in params.items() if v is not None}
    raise web.HTTPFound(uri + ("&" if "?" in uri else "?") + urlencode(params), headers=NO_STORE)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#121212;color:#eee;display:flex;justify-content:center;margin:0}}
main{{max-width:26rem;width:100%;padding:2rem}} h1{{font-size:1.4rem}} label{{display:block;margin:.8rem 0 .2rem}}
input[type=text],input[type=password]{{width:100%;box-sizing:border-box;padding:.6rem;border-radius:4px;border:1px solid #555;background:#222;color:#eee}}
button{{margin:1rem .5rem 0 0;padding:.6rem 1.4rem;border-radius:2rem;border:0;font-weight:bold;cursor:pointer}}
.allow{{background:#1db954;color:#000}} .deny{{background:#333;color:#eee}} .error{{color:#ff6b6b}} li{{margin:.2rem 0}}
</style></head><body><main>{body}</main></body></html>"""
    return web.Response(text=doc, status=status, content_type="text/html", charset="utf-8",
                        headers={**NO_STORE, "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})


def _login_form(req: dict, q, error: str | None = None, status: int = 200) -> web.Response:
    e = html.escape
    hidden = "".join(f'<input type="hidden" name="{k}" value="{e(q[k])}">'
                     for k in ("client_id", "response_type", "redirect_uri", "state", "scope",
                               "code_challenge_method", "code_challenge") if q.get(k) is not None)
    scopes = req["scope"].split()
    items = "".join(f"<li>{e(SCOPE_TEXT.get(s, s))} <small>({e(s)})</small></li>" for s in scopes) \
        or "<li>Only your public profile</li>"
    err = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    body = f"""<h1>Sign in to Syncopate</h1>
<p><b>{e(req['app_name'])}</b> asks to:</p><ul>{items}</ul>{err}
<form method="post" action="/authorize">{hidden}
<label for="username">User id</label><input type="text" id="username" name="username" autocomplete="username" required value="{e(q.get('username', ''))}">
<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password">
<button class="allow" type="submit" name="action" value="allow">Agree</button>
<button class="deny" type="submit" name="action" value="deny" formnovalidate>Cancel</button>
</form>"""
    return _page("Sign in - Syncopate", body, status)


async def _checked(request: web.Request, q) -> dict | web.Response:
    """The authorize request, checked: its parameters, or the error page (an unknown client or
    redirect uri: never redirected), or a redirect carrying the OAuth error (raised)."""
    try:
        return await _check_authorize(request, q)
    except _Bad as exc:
        return _page("Error - Syncopate", f'<h1>Something went wrong</h1><p class="error">{html.escape(str(exc))}</p>', 400)
    except OAuthError as exc:
        _redirect(q["redirect_uri"], {"error": exc.error, "error_description": exc.description, "state": q.get("state")})


async def authorize_page(request: web.Request) -> web.Response:
    q = request.query
    req = await _checked(request, q)
    return req if isinstance(req, web.Response) else _login_form(req, q)


async def authorize_submit(request: web.Request) -> web.Response:
    form = await request.post()
    q = {k: v for k, v in form.items() if isinstance(v, str)}
    req = await _checked(request, q)
    if isinstance(req, web.Response):
        return req
    if q.get("action") != "allow":
        _redirect(req["redirect_uri"], {"error": "access_denied", "state": req["state"]})
    uid, password = q.get("username", ""), q.get("password", "")
    if not USER_ID_RE.match(uid):
        return _login_form(req, q, "Wrong user id or password.", 401)
    attempts = request.app[LOGIN_ATTEMPTS]
    bucket = attempts.get(uid)
    if bucket is None:
        if len(attempts) > 100_000:
            attempts.clear()
        bucket = attempts[uid] = TokenBucket(LOGIN_RATE, LOGIN_BURST)
    if bucket.take():
        return _login_form(req, q, "Too many attempts: wait a few seconds and try again.", 429)
    c = ctx(request)
    try:
        cred = await c.call(ACCOUNT, uid, "credentials", {})
    except SyncopateError as err:
        if err.code != ErrorCode.NOT_FOUND:
            raise
        cred = {"password_hash": None}
    ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, password, cred["password_hash"])
    if not ok:
        return _login_form(req, q, "Wrong user id or password.", 401)
    code = f"{_b64(uid)}.{secrets.token_urlsafe(32)}"
    await c.call(ACCOUNT, uid, "issue_code", {"code_hash": sha(code), "client_id": req["client_id"],
                                              "redirect_uri": req["redirect_uri"], "scope": req["scope"],
                                              "code_challenge": req["code_challenge"]},
                 op_id=f"oauth-{uuid.uuid4().hex}")
    _redirect(req["redirect_uri"], {"code": code, "state": req["state"]})


# == /api/token ====================================================================================

def _oauth_error(exc: OAuthError) -> web.Response:
    return web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status,
                             headers=NO_STORE)


async def token(request: web.Request) -> web.Response:
    try:
        return await _token(request)
    except OAuthError as exc:
        return _oauth_error(exc)


async def _client(request: web.Request, form) -> tuple[dict, bool]:
    """(the client, whether it proved its secret). HTTP Basic or client_id/client_secret in the body."""
    client_id, secret = form.get("client_id"), form.get("client_secret")
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "Invalid client")
        try:
            client_id, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise OAuthError("invalid_client", "Invalid client") from None
    if not isinstance(client_id, str) or not client_id:
        raise OAuthError("invalid_client", "Invalid client")
    app = await client_app(request, client_id)
    if app is None:
        raise OAuthError("invalid_client", "Invalid client")
    if secret:
        if app["public"] or not secrets.compare_digest(sha(secret), app["secret_hash"] or ""):
            raise OAuthError("invalid_client", "Invalid client secret")
        return app, True
    return app, False


async def _token(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    grant = form.get("grant_type")
    if grant not in ("authorization_code", "refresh_token", "client_credentials"):
        raise OAuthError("unsupported_grant_type",
                         "grant_type must be authorization_code, refresh_token or client_credentials")
    app, authenticated = await _client(request, form)
    c = ctx(request)
    if grant == "client_credentials":
        if not authenticated:
            raise OAuthError("invalid_client", "client_credentials needs the client secret")
        return _answer({"access_token": c.auth.mint_app(app["client_id"]), "token_type": "Bearer",
                        "expires_in": DEFAULT_TTL_S})
    if grant == "authorization_code":
        code = form.get("code") or ""
        uid = _unb64(code.partition(".")[0])
        if uid is None or len(code) > 200:
            raise OAuthError("invalid_grant", "Invalid authorization code")
        if "redirect_uri" not in form:
            raise OAuthError("invalid_request", "redirect_uri is required")
        verifier = form.get("code_verifier")
        if verifier is not None and not VERIFIER_RE.match(verifier):
            raise OAuthError("invalid_grant", "code_verifier was incorrect")
        fid = secrets.token_urlsafe(18)
        refresh = f"{_b64(uid)}.{fid}.{secrets.token_urlsafe(32)}"
        args = {"code_hash": sha(code), "client_id": app["client_id"], "redirect_uri": form["redirect_uri"],
                "family": fid, "token_hash": sha(refresh), "client_authenticated": authenticated}
        if verifier is not None:
            args["code_verifier"] = verifier
        grant_reply = await c.call(ACCOUNT, uid, "redeem_code", args, op_id=f"oauth-{uuid.uuid4().hex}")
    else:
        refresh_in = form.get("refresh_token") or ""
        head, _, rest = refresh_in.partition(".")
        fid = rest.partition(".")[0]
        uid = _unb64(head)
        if uid is None or not fid or len(refresh_in) > 300:
            raise OAuthError("invalid_grant", "Invalid refresh token")
        fam = await c.call(ACCOUNT, uid, "family", {"family": fid})
        if fam is not None and not fam["revoked"]:
            # signed out since (the device oauth-<family>): the grant ends with it
            check = await c.call(SESSION, uid, "check_device", {"device_id": f"oauth-{fid}", "iat": fam["created"] // 1000})
            if check.get("revoked"):
                await c.call(ACCOUNT, uid, "revoke", {"family": fid}, op_id=f"oauth-{uuid.uuid4().hex}")
                raise OAuthError("invalid_grant", "Refresh token revoked")
        refresh = f"{_b64(uid)}.{fid}.{secrets.token_urlsafe(32)}"
        grant_reply = await c.call(ACCOUNT, uid, "refresh",
                                   {"family": fid, "token_hash": sha(refresh_in), "new_hash": sha(refresh),
                                    "client_id": app["client_id"], "client_authenticated": authenticated},
                                   op_id=f"oauth-{uuid.uuid4().hex}")
    if not grant_reply.get("ok"):
        raise OAuthError(grant_reply["error"], grant_reply["error_description"])
    scope = grant_reply["scope"]
    access = c.auth.mint(uid, product=grant_reply["product"], scope=frozenset(scope.split()),
                         device_id=f"oauth-{fid}", client_id=app["client_id"])
    return _answer({"access_token": access, "token_type": "Bearer", "scope": scope, "expires_in": DEFAULT_TTL_S,
                    "refresh_token": refresh})


def _answer(body: dict) -> web.Response:
    return web.json_response(body, headers=NO_STORE)

