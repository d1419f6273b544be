"""OAuth 2.0 as Spotify's accounts service does it: spotipy's SpotifyOAuth / SpotifyPKCE /
SpotifyClientCredentials and tekore's Credentials / UserAuth, unmodified, pointed at our /authorize
and /api/token; the login page driven by an HTTP client posting its form; scopes enforced from
gateway/scopes.py on REST and on the websocket; every refusal in RFC 6749's or Spotify's shape."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlparse

import aiohttp
import orjson
import pytest
import spotipy
import tekore as tk
import tekore._auth.expiring.client as tk_client
from spotipy.cache_handler import MemoryCacheHandler

from actors.account import AccountEntity
from actors.entity import SYSTEM, Command, Env
from gateway import scopes
from tests.support.servers import admin_headers, memory_server
from tests.spotify_clients import spotipy_client

PASSWORD = "a long enough password"
REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with memory_server(tmp_path_factory, "oauth", hosts=2) as srv:
        yield srv


@pytest.fixture
async def user(server, http, unique):
    from actors.account import hash_password
    r = await http.post(f"{server.url}/admin/users", headers=admin_headers(server), json={
        "id": unique, "display_name": "O Auth", "country": "NO", "email": "o@example.com",
        "password_hash": hash_password(PASSWORD, secrets.token_bytes(16))})
    assert r.status == 201
    return unique


async def register(server, http, public=False, redirect=REDIRECT) -> dict:
    r = await http.post(f"{server.url}/admin/apps", headers=admin_headers(server),
                        json={"name": "Test app", "redirect_uris": [redirect], "public": public})
    assert r.status == 201, await r.text()
    return await r.json()


async def login(http, authorize_url: str, user: str, password: str = PASSWORD, action: str = "allow"):
    """Drive the login page as a browser would: GET it, post its form. Returns (status, Location, page)."""
    r = await http.get(authorize_url, allow_redirects=False)
    page = await r.text()
    if r.status != 200:
        return r.status, r.headers.get("Location"), page
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
    form = {k: v.replace("&amp;", "&").replace("&quot;", '"').replace("&#x27;", "'") for k, v in form.items()}
    form.update(username=user, password=password, action=action)
    action_url = str(r.url.join(aiohttp.client.URL(re.search(r'<form method="post" action="([^"]+)"', page)[1])))
    r = await http.post(action_url, data=form, allow_redirects=False)
    return r.status, r.headers.get("Location"), await r.text()


def query(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


async def token_post(http, server, data: dict, basic: tuple[str, str] | None = None):
    headers = {}
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    r = await http.post(f"{server.url}/api/token", data=data, headers=headers)
    return r.status, await r.json()


# -- spotipy -------------------------------------------------------------------------------------

async def test_spotipy_authorization_code_flow(server, http, user):
    app = await register(server, http)
    oauth = spotipy.SpotifyOAuth(client_id=app["client_id"], client_secret=app["client_secret"], redirect_uri=REDIRECT,
                                 scope="user-read-private user-read-email", state="xyz", open_browser=False,
                                 cache_handler=MemoryCacheHandler())
    oauth.OAUTH_AUTHORIZE_URL = f"{server.url}/authorize"
    oauth.OAUTH_TOKEN_URL = f"{server.url}/api/token"
    status, loc, _ = await login(http, oauth.get_authorize_url(), user)
    assert status == 302 and loc.startswith(REDIRECT + "?")
    q = query(loc)
    assert q["state"] == "xyz" and oauth.parse_response_code(loc) == q["code"]
    info = await asyncio.to_thread(oauth.get_access_token, q["code"], as_dict=True, check_cache=False)
    assert info["token_type"] == "Bearer" and info["expires_in"] == 3600
    assert set(info["scope"].split()) == {"user-read-private", "user-read-email"}
    sp = spotipy.Spotify(auth_manager=oauth)
    sp.prefix = server.url + "/v1/"
    me = await asyncio.to_thread(sp.me)
    assert me["id"] == user and me["country"] == "NO" and me["email"] == "o@example.com"
    # the code is single-use: a replay is refused, and revokes what it granted
    status, body = await token_post(http, server, {"grant_type": "authorization_code", "code": q["code"],
                                                   "redirect_uri": REDIRECT},
                                    basic=(app["client_id"], app["client_secret"]))
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await token_post(http, server, {"grant_type": "refresh_token", "refresh_token": info["refresh_token"]},
                                    basic=(app["client_id"], app["client_secret"]))
    assert (status, body["error"]) == (400, "invalid_grant"), body


async def test_spotipy_refresh_rotation_and_reuse(server, http, user):
    app = await register(server, http)
    oauth = spotipy.SpotifyOAuth(client_id=app["client_id"], client_secret=app["client_secret"], redirect_uri=REDIRECT,
                                 scope="user-read-private", open_browser=False, cache_handler=MemoryCacheHandler())
    oauth.OAUTH_AUTHORIZE_URL = f"{server.url}/authorize"
    oauth.OAUTH_TOKEN_URL = f"{server.url}/api/token"
    _, loc, _ = await login(http, oauth.get_authorize_url(), user)
    first = await asyncio.to_thread(oauth.get_access_token, query(loc)["code"], as_dict=True, check_cache=False)
    second = await asyncio.to_thread(oauth.refresh_access_token, first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    me = await asyncio.to_thread(spotipy_client(server.url, second["access_token"]).me)
    assert me["product"] == "premium"
    # reusing the rotated token revokes the family: the newest token stops working too
    with pytest.raises(spotipy.SpotifyOauthError, match="invalid_grant"):
        await asyncio.to_thread(oauth.refresh_access_token, first["refresh_token"])
    with pytest.raises(spotipy.SpotifyOauthError, match="invalid_grant"):
        await asyncio.to_thread(oauth.refresh_access_token, second["refresh_token"])


async def test_spotipy_pkce_flow(server, http, user):
    app = await register(server, http, public=True)
    assert "client_secret" not in app
    pkce = spotipy.SpotifyPKCE(client_id=app["client_id"], redirect_uri=REDIRECT, scope="user-read-email",
                               open_browser=False, cache_handler=MemoryCacheHandler())
    pkce.OAUTH_AUTHORIZE_URL = f"{server.url}/authorize"
    pkce.OAUTH_TOKEN_URL = f"{server.url}/api/token"
    pkce.get_pkce_handshake_parameters()
    url = pkce.get_authorize_url()
    assert "code_challenge_method=S256" in url
    _, loc, _ = await login(http, url, user)
    code = query(loc)["code"]
    # a wrong verifier is refused and changes nothing: the right one still redeems the code
    status, body = await token_post(http, server, {"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": REDIRECT, "client_id": app["client_id"],
                                                   "code_verifier": "x" * 64})
    assert (status, body) == (400, {"error": "invalid_grant", "error_description": "code_verifier was incorrect"})
    access = await asyncio.to_thread(pkce.get_access_token, code, check_cache=False)
    me = await asyncio.to_thread(spotipy_client(server.url, access).me)
    assert me["email"] == "o@example.com" and "country" not in me
    info = pkce.cache_handler.get_cached_token()
    again = await asyncio.to_thread(pkce.refresh_access_token, info["refresh_token"])
    assert again["access_token"] and again["refresh_token"] != info["refresh_token"]


async def test_spotipy_client_credentials(server, http, user):
    app = await register(server, http)
    cc = spotipy.SpotifyClientCredentials(client_id=app["client_id"], client_secret=app["client_secret"],
                                          cache_handler=MemoryCacheHandler())
    cc.OAUTH_TOKEN_URL = f"{server.url}/api/token"
    sp = spotipy.Spotify(client_credentials_manager=cc, retries=0, status_retries=0)
    sp.prefix = server.url + "/v1/"
    found = await asyncio.to_thread(sp.search, "a", 1, 0, "track")
    assert found["tracks"]["items"]
    assert (await asyncio.to_thread(sp.user, user))["id"] == user
    with pytest.raises(spotipy.SpotifyException) as exc:
        await asyncio.to_thread(sp.me)
    assert exc.value.http_status == 401
    token = cc.get_access_token(as_dict=False)
    r = await http.get(f"{server.url}/v1/ws?token={token}")
    assert r.status == 401
    # a public client has no secret to prove
    pub = await register(server, http, public=True)
    status, body = await token_post(http, server, {"grant_type": "client_credentials", "client_id": pub["client_id"]})
    assert (status, body["error"]) == (400, "invalid_client")
    status, body = await token_post(http, server, {"grant_type": "client_credentials"},
                                    basic=(app["client_id"], "wrong"))
    assert (status, body["error"]) == (400, "invalid_client")


# -- tekore ---------------------------------------------------------------------------------------

async def test_tekore_user_auth_with_and_without_pkce(server, http, user, monkeypatch):
    monkeypatch.setattr(tk_client, "OAUTH_AUTHORIZE_URL", f"{server.url}/authorize")
    monkeypatch.setattr(tk_client, "OAUTH_TOKEN_URL", f"{server.url}/api/token")
    app = await register(server, http)
    cred = tk.Credentials(app["client_id"], app["client_secret"], REDIRECT)
    for pkce in (False, True):
        auth = tk.UserAuth(cred, scope=[tk.scope.user_read_private, tk.scope.user_modify_playback_state], pkce=pkce)
        _, loc, _ = await login(http, auth.url, user)
        tok = await asyncio.to_thread(auth.request_token, url=loc)
        assert tok.scope == tk.Scope(tk.scope.user_read_private, tk.scope.user_modify_playback_state)
        assert tok.refresh_token
        me = await asyncio.to_thread(lambda: tk.Spotify(tok, sender=_rebase(server)).current_user())
        assert me.country == "NO" and me.email is None
        fresh = await asyncio.to_thread(cred.refresh, tok)
        assert fresh.access_token != tok.access_token and fresh.refresh_token != tok.refresh_token
    app_token = await asyncio.to_thread(cred.request_client_token)
    assert app_token.refresh_token is None


def _rebase(server):
    from tests.spotify_clients import Rebase
    return Rebase(server.url + "/v1/")


# -- the login page and /authorize refusals ---------------------------------------------------------

async def test_authorize_refusals(server, http, user):
    app = await register(server, http)
    base = f"{server.url}/authorize?client_id={app['client_id']}&response_type=code&state=s1"
    # unknown client and unregistered redirect URI: an error page, never a redirect
    for url in (f"{server.url}/authorize?client_id=nope&response_type=code&redirect_uri={REDIRECT}",
                f"{base}&redirect_uri={REDIRECT}x", f"{base}&redirect_uri=http://127.0.0.1:9/"):
        r = await http.get(url, allow_redirects=False)
        assert r.status == 400 and "INVALID_CLIENT" in await r.text()
    r = await http.get(f"{base}&redirect_uri={REDIRECT}&scope=user-read-nothing", allow_redirects=False)
    assert r.status == 302 and query(r.headers["Location"])["error"] == "invalid_scope"
    r = await http.get(base.replace("response_type=code", "response_type=token") + f"&redirect_uri={REDIRECT}",
                       allow_redirects=False)
    assert query(r.headers["Location"])["error"] == "unsupported_response_type"
    r = await http.get(f"{base}&redirect_uri={REDIRECT}&code_challenge_method=plain&code_challenge=abc",
                       allow_redirects=False)
    assert query(r.headers["Location"])["error"] == "invalid_request"
    # a public client must use PKCE
    pub = await register(server, http, public=True)
    r = await http.get(f"{server.url}/authorize?client_id={pub['client_id']}&response_type=code&redirect_uri={REDIRECT}",
                       allow_redirects=False)
    assert query(r.headers["Location"])["error"] == "invalid_request"
    # wrong password: the page again (401), no code; unknown user: the same words
    for who, pw in ((user, "not the password"), (f"{user}-nobody", PASSWORD)):
        status, loc, page = await login(http, f"{base}&redirect_uri={REDIRECT}", who, pw)
        assert status == 401 and loc is None and "Wrong user id or password" in page
    # cancel: access_denied with the state
    status, loc, _ = await login(http, f"{base}&redirect_uri={REDIRECT}", user, action="deny")
    assert status == 302 and query(loc) == {"error": "access_denied", "state": "s1"}
    # the page escapes what it echoes
    r = await http.get(f"{base}&redirect_uri={REDIRECT}&state=%22%3E%3Cscript%3E")
    assert "<script>" not in await r.text()


async def test_token_endpoint_refusals(server, http, user):
    app = await register(server, http)
    creds = (app["client_id"], app["client_secret"])
    _, loc, _ = await login(http, f"{server.url}/authorize?client_id={app['client_id']}&response_type=code"
                                  f"&redirect_uri={REDIRECT}", user)
    code = query(loc)["code"]
    cases = [
        ({"grant_type": "password"}, creds, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}, None, "invalid_client"),
        ({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": app["client_id"]},
         None, "invalid_client"),
        ({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT + "/x"}, creds, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "garbage", "redirect_uri": REDIRECT}, creds, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": code}, creds, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "a.b.c"}, creds, "invalid_grant"),
    ]
    for data, basic, error in cases:
        status, body = await token_post(http, server, data, basic)
        assert status == 400 and body["error"] == error and body["error_description"], (data, body)
    # none of that consumed the code
    status, body = await token_post(http, server, {"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": REDIRECT}, creds)
    assert status == 200 and body["refresh_token"]
    r = await http.post(f"{server.url}/api/token", json={"grant_type": "client_credentials"})
    assert r.status == 400 and (await r.json())["error"] == "invalid_request"


def test_code_expires_and_is_single_use():
    e = AccountEntity("u1", Env())
    e.handle(Command("account", "u1", "create", {}, SYSTEM, now_ms=0))
    h = hashlib.sha256(b"c").hexdigest()
    e.handle(Command("account", "u1", "issue_code", {"code_hash": h, "client_id": "c" * 16, "redirect_uri": REDIRECT,
                                                     "scope": "", "code_challenge": None}, SYSTEM, now_ms=1000))
    redeem = {"code_hash": h, "client_id": "c" * 16, "redirect_uri": REDIRECT, "family": "f" * 20,
              "token_hash": "0" * 64, "client_authenticated": True}
    late = e.handle(Command("account", "u1", "redeem_code", redeem, SYSTEM, now_ms=1000 + 10 * 60_000))
    assert late.reply["error"] == "invalid_grant" and not late.records
    ok = e.handle(Command("account", "u1", "redeem_code", redeem, SYSTEM, now_ms=2000))
    assert ok.reply["ok"] and ok.records
    again = e.handle(Command("account", "u1", "redeem_code", {**redeem, "family": "g" * 20}, SYSTEM, now_ms=3000))
    assert again.reply["error"] == "invalid_grant" and e.families["f" * 20]["revoked"]


# -- sign-out ------------------------------------------------------------------------------------

async def test_sign_out_revokes_access_and_refresh(server, http, user):
    app = await register(server, http)
    creds = (app["client_id"], app["client_secret"])
    _, loc, _ = await login(http, f"{server.url}/authorize?client_id={app['client_id']}&response_type=code"
                                  f"&redirect_uri={REDIRECT}", user)
    status, tok = await token_post(http, server, {"grant_type": "authorization_code", "code": query(loc)["code"],
                                                  "redirect_uri": REDIRECT}, creds)
    h = {"Authorization": f"Bearer {tok['access_token']}"}
    sid = orjson.loads(base64.urlsafe_b64decode(tok["access_token"].split(".")[1] + "=="))["sid"]
    r = await http.delete(f"{server.url}/v1/me/sessions/{sid}", headers=h)
    assert r.status == 200
    r = await http.get(f"{server.url}/v1/me", headers=h)
    assert r.status == 401
    status, body = await token_post(http, server, {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                                    creds)
    assert (status, body["error"]) == (400, "invalid_grant")


# -- scopes -----------------------------------------------------------------------------------------

async def test_scopes_on_rest_and_websocket(server, http, unique):
    narrow = server.auth.mint(unique, scope=frozenset({"user-read-private"}))
    h = {"Authorization": f"Bearer {narrow}"}
    for method, path in [("GET", "/v1/me/player"), ("PUT", "/v1/me/player/pause"), ("GET", "/v1/me/tracks"),
                         ("PUT", "/v1/me/tracks?ids=x"), ("POST", f"/v1/users/{unique}/playlists"),
                         ("GET", "/v1/me/playlists"), ("DELETE", "/v1/me/following?type=artist&ids=x")]:
        r = await http.request(method, server.url + path, headers=h)
        assert r.status == 403 and await r.json() == {"error": {"status": 403, "message": "Insufficient client scope",
                                                                "code": "FORBIDDEN"}}, path
    assert (await http.get(f"{server.url}/v1/me", headers=h)).status == 200
    assert (await http.get(f"{server.url}/v1/search?q=a&type=track", headers=h)).status == 200
    # the full-scope token of `syncopate token` passes the same checks
    full = {"Authorization": f"Bearer {server.auth.mint(unique)}"}
    assert (await http.get(f"{server.url}/v1/me/tracks", headers=full)).status == 200
    async with http.ws_connect(f"{server.url}/v1/ws?token={narrow}") as ws:
        assert (await ws.receive_json())["type"] == "hello"
        for i, (t, payload) in enumerate([("player.pause", {}), ("library.list", {"type": "track"}),
                                          ("device.register", {"device_id": "d1", "name": "x"}),
                                          ("subscribe", {"entity": f"devicegroup:{unique}"})]):
            await ws.send_json({"id": str(i), "type": t, "payload": payload})
            while True:
                f = await ws.receive_json()
                if f.get("id") == str(i):
                    break
            assert f["type"] == "error" and f["error"]["status"] == 403, f
        await ws.send_json({"id": "ok", "type": "ping"})
        while (f := await ws.receive_json()).get("id") != "ok":
            pass
        assert f["type"] == "pong"


async def test_every_route_is_classified(server):
    """Every route the gateway serves under /v1 has a rule other than the default, so a new route's
    scope is a decision, not an accident."""
    missing = []
    for route in server.gateway.app.router.routes():
        path = route.resource.canonical
        if not path.startswith("/v1/") or path.startswith(("/v1/ws", "/v1/yjs")) or route.method == "HEAD":
            continue
        concrete = re.sub(r"\{[^}]+\}", "x1", path)
        if not any(route.method in m and p.match(concrete.rstrip("/")) for m, p, _ in scopes.REST_RULES):
            missing.append(f"{route.method} {path}")
    assert not missing, missing
