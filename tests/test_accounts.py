"""Accounts: the `account` entity through the host's write path, GET /v1/me and /v1/users/{id} in
Spotify's shapes (spotipy and tekore unmodified), the operator API and `syncopate user|app`."""
from __future__ import annotations

import asyncio
import io
import json

import pytest

from actors.account import AccountEntity, hash_password, verify_password
from actors.entity import SYSTEM, Command, Env, Principal
from protocols.errors import SyncopateError
from syncopate import cli
from tests.support.servers import admin_headers, memory_server
from tests.spotify_clients import spotipy_client, tekore_client


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with memory_server(tmp_path_factory, "accounts", hosts=2) as srv:
        yield srv


async def add_user(http, server, uid, **fields):
    r = await http.post(f"{server.url}/admin/users", json={"id": uid, **fields}, headers=admin_headers(server))
    assert r.status == 201, await r.text()
    return await r.json()


# -- the entity ------------------------------------------------------------------------------------

def test_entity_refusals_change_nothing():
    e = AccountEntity("alice", Env())
    out = e.handle(Command("account", "alice", "create", {"display_name": "Alice", "country": "SE"}, SYSTEM, now_ms=5))
    assert out.records and out.effects[0].kind == "directory"
    e.version = 1
    before = e.snapshot()
    for op, args, principal in [("create", {}, SYSTEM), ("update", {"country": "Sweden"}, SYSTEM),
                                ("update", {"product": "gold"}, SYSTEM), ("update", {}, SYSTEM),
                                ("update", {"display_name": "x"}, Principal("alice")),
                                ("me", {}, Principal("bob")),
                                ("update", {"password_hash": {"kdf": "md5", "salt": "00", "hash": "00"}}, SYSTEM)]:
        with pytest.raises(SyncopateError):
            e.handle(Command("account", "alice", op, args, principal, now_ms=6))
        assert e.snapshot() == before
    # replay == handle
    fresh = AccountEntity("alice", Env())
    for rec in out.records:
        fresh.apply(rec)
    assert fresh.snapshot() == before


def test_password_hash_is_salted_and_verified():
    a, b = hash_password("correct horse", b"s" * 16), hash_password("correct horse", b"t" * 16)
    assert a["kdf"] == "scrypt" and a["hash"] != b["hash"] and "correct" not in json.dumps(a)
    assert verify_password("correct horse", a) and not verify_password("correct horsf", a)
    assert not verify_password("", None)
    with pytest.raises(ValueError):
        hash_password("short", b"s" * 16)


# -- /v1/me and /v1/users/{id} ---------------------------------------------------------------------

async def test_me_and_users_in_spotifys_shapes(server, http, unique):
    await add_user(http, server, unique, display_name="Ada L", country="SE", product="free", email="ada@example.com")
    token = server.auth.mint(unique)
    sp = spotipy_client(server.url, token)
    me = await asyncio.to_thread(sp.me)
    assert me == {"account_id": unique, "country": "SE", "display_name": "Ada L", "email": "ada@example.com",
                  "explicit_content": {"filter_enabled": False, "filter_locked": False},
                  "external_urls": {"spotify": f"https://open.spotify.com/user/{unique}"},
                  "followers": {"href": None, "total": 0}, "href": f"{server.url}/v1/users/{unique}",
                  "id": unique, "images": [], "product": "free", "type": "user", "uri": f"spotify:user:{unique}"}
    assert await asyncio.to_thread(sp.current_user) == me
    tk_me = await asyncio.to_thread(tekore_client(server.url, token).current_user)
    assert tk_me.id == unique and tk_me.country == "SE" and tk_me.email == "ada@example.com"
    # another user sees the public subset only
    other = spotipy_client(server.url, server.auth.mint(f"{unique}-b"))
    pub = await asyncio.to_thread(other.user, unique)
    assert pub == {k: me[k] for k in ("display_name", "external_urls", "followers", "href", "id", "images",
                                      "type", "uri")}
    tk_pub = await asyncio.to_thread(tekore_client(server.url, server.auth.mint("x" + unique)).user, unique)
    assert tk_pub.display_name == "Ada L"
    r = await http.get(f"{server.url}/v1/users/nobody-{unique}", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 404 and (await r.json())["error"]["status"] == 404


async def test_private_fields_need_their_scopes(server, http, unique):
    await add_user(http, server, unique, country="DE", email="x@example.com")
    for scope, present in [(set(), set()), ({"user-read-private"}, {"country", "product", "explicit_content"}),
                           ({"user-read-email"}, {"email"})]:
        h = {"Authorization": f"Bearer {server.auth.mint(unique, scope=frozenset(scope))}"}
        body = await (await http.get(f"{server.url}/v1/me", headers=h)).json()
        assert {"country", "product", "explicit_content", "email"} & set(body) == present, (scope, body)


async def test_me_for_a_token_only_user(server, http, unique):
    body = await (await http.get(f"{server.url}/v1/me", headers={
        "Authorization": f"Bearer {server.auth.mint(unique, product='free')}"})).json()
    assert body["id"] == unique and body["product"] == "free" and body["display_name"] == unique


async def test_accounts_are_durable_through_the_store(server, http, unique):
    await add_user(http, server, unique, display_name="Durable")
    loaded = await server.memory.load(f"account:{unique}")
    assert loaded.last_seq >= 1      # written by the host's group commit, like every entity


async def test_admin_api_refuses_bad_input_and_user_tokens(server, http, unique):
    await add_user(http, server, unique)
    h = admin_headers(server)
    for body, status in [({"id": unique}, 409),                      # exists already
                         ({"id": "bad id!"}, 400), ({"id": f"{unique}x", "country": "Sweden"}, 400),
                         ({"id": f"{unique}y", "bogus": 1}, 400), ({"id": f"{unique}z", "email": "nope"}, 400)]:
        r = await http.post(f"{server.url}/admin/users", json=body, headers=h)
        assert (r.status, (await r.json())["error"]["status"]) == (status, status), body
    r = await http.get(f"{server.url}/admin/users", headers={"Authorization": f"Bearer {server.auth.mint(unique)}"})
    assert r.status == 403
    r = await http.get(f"{server.url}/v1/me", headers=h)       # an operator token is for /admin only
    assert r.status == 401
    me = await (await http.get(f"{server.url}/v1/me", headers={
        "Authorization": f"Bearer {server.auth.mint(unique)}"})).json()
    assert me["country"] == "US"


# -- the CLI ---------------------------------------------------------------------------------------

def _run_cli(argv, stdin: str = "") -> tuple[int, str]:
    import contextlib
    import sys
    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            rc = cli.main(argv)
    finally:
        sys.stdin = old
    return rc, out.getvalue()


async def test_cli_user_and_app_commands(server, http, unique):
    opts = ["--server", server.url, "--data-dir", server.spec.data_dir]
    rc, out = await asyncio.to_thread(_run_cli, ["user", "add", unique, "--display-name", "Cli User",
                                                 "--country", "FR", "--password", *opts], "s3cret-password\n")
    assert rc == 0 and json.loads(out)["has_password"] is True
    rc, out = await asyncio.to_thread(_run_cli, ["user", "set", unique, "--product", "free", *opts])
    assert json.loads(out)["product"] == "free" and json.loads(out)["country"] == "FR"
    rc, out = await asyncio.to_thread(_run_cli, ["user", "list", "--limit", "200", *opts])
    listed = json.loads(out)
    assert unique in [u["id"] for u in listed["items"]] and all("password_hash" not in u for u in listed["items"])
    with pytest.raises(SystemExit, match="409"):
        await asyncio.to_thread(_run_cli, ["user", "add", unique, *opts])
    rc, out = await asyncio.to_thread(_run_cli, ["app", "add", f"App {unique}", "--redirect-uri",
                                                 "http://127.0.0.1:9/cb", *opts])
    app = json.loads(out)
    assert len(app["client_secret"]) == 64 and app["redirect_uris"] == ["http://127.0.0.1:9/cb"]
    rc, out = await asyncio.to_thread(_run_cli, ["app", "list", "--limit", "200", *opts])
    apps = json.loads(out)["items"]
    mine = [a for a in apps if a["client_id"] == app["client_id"]]
    assert mine and "secret_hash" not in mine[0] and "client_secret" not in mine[0]
    # the token command keeps working
    rc, out = await asyncio.to_thread(_run_cli, ["token", unique, "--data-dir", server.spec.data_dir])
    tok = out.strip()
    r = await http.get(f"{server.url}/v1/me", headers={"Authorization": f"Bearer {tok}"})
    assert (await r.json())["display_name"] == "Cli User"
