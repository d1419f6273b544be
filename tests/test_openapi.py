"""The OpenAPI 3.1 description of /v1 (gateway/openapi.py, served at /v1/openapi.json) is kept true:

  - it is a valid OpenAPI 3.1 document (openapi-spec-validator: the 3.1 meta-schema and every $ref);
  - every /v1 route the app registers is described, and nothing described is unregistered;
    our extensions, and only they, are marked `x-syncopate-extension`; each operation's security is
    the rule gateway/scopes.py enforces;
  - real answers validate: every operation is called with a valid request (checked against the
    document's parameters and request body), its status must be one the document lists and its body
    must validate against that status's schema (JSON Schema 2020-12, formats checked); every family
    of operations (tag) also has an error answer validated against the error schema.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import time
from urllib.parse import urlencode

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway import openapi, scopes
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.player import Device

DOC = openapi.build()
EXT = openapi.EXT
METHODS = ("get", "put", "post", "delete", "patch")
BASE = "urn:syncopate:openapi"
REGISTRY = Registry().with_resource(BASE, Resource(contents=DOC, specification=DRAFT202012))
VENDORED = json.loads(openapi.VENDORED.read_text())


def norm(path: str) -> str:
    """A path template with its parameter names erased: /v1/playlists/{id} == /v1/playlists/{playlist_id}."""
    return re.sub(r"\{[^}]+\}", "{}", path.rstrip("/") or "/")


def operations():
    for path, item in DOC["paths"].items():
        for m, op in item.items():
            if m in METHODS:
                yield path, m, op


# == the document ====================================================================================

def test_document_is_valid_openapi_3_1():
    errors = [e.message for e in OpenAPIV31SpecValidator(DOC).iter_errors()]
    assert not errors, errors[:5]
    assert DOC["openapi"].startswith("3.1.")


def test_the_validator_refuses_a_broken_document():
    """The check above can fail: a response without a description, a dangling $ref are refused."""
    broken = json.loads(json.dumps(DOC))
    broken["paths"]["/v1/me"]["get"]["responses"]["200"] = {"content": {}}
    assert list(OpenAPIV31SpecValidator(broken).iter_errors())
    dangling = json.loads(json.dumps(DOC))
    dangling["paths"]["/v1/tracks"]["get"]["responses"]["200"] = {"$ref": "#/components/responses/Nope"}
    with pytest.raises(Exception):
        errors = list(OpenAPIV31SpecValidator(dangling).iter_errors())
        assert not errors       # either way the document is refused


def test_every_registered_v1_route_is_described_and_nothing_else(server):
    registered = set()
    for route in server.gateway.app.router.routes():
        path = route.resource.canonical
        if (path.startswith("/v1/") or path == "/v1") and route.method != "HEAD":
            registered.add((route.method.lower(), norm(path)))
    described = {(m, norm(p)) for p, m, _ in operations()}
    assert registered - described == set(), "registered but not described"
    assert described - registered == set(), "described but not registered"
    assert len(described) >= 68


def test_extensions_and_only_they_are_marked():
    spotify = {(m, "/v1" + p) for p, item in VENDORED["paths"].items() for m in item}
    for path, m, op in operations():
        assert op.get(EXT, False) is ((m, path) not in spotify), (m, path)
    marked = {(m, p) for p, m, op in operations() if op.get(EXT)}
    for must in [("get", "/v1/me/sessions"), ("delete", "/v1/me/sessions/{device_id}"),
                 ("get", "/v1/me/player/stream-counts"), ("get", "/v1/playlists/{playlist_id}/collaborators"),
                 ("put", "/v1/playlists/{playlist_id}/collaborators/{user_id}"), ("get", "/v1/ws"),
                 ("get", "/v1/me/data-export"), ("delete", "/v1/me")]:
        assert must in marked, must
    # our fields on Spotify's objects are marked too
    item = DOC["components"]["schemas"]["PlaylistTrackObject"]["properties"]["entry_id"]
    assert item[EXT] is True


def test_security_is_the_enforced_scope_rule():
    for path, m, op in operations():
        rule = scopes.rest_rule(m.upper(), re.sub(r"\{[^}]+\}", "x1", path))
        if path == "/v1/openapi.json":
            assert op["security"] == [], "the document is open"
            continue
        named = sorted(s for req in op["security"] for s in req.get("oauth2", []))
        if path.startswith(("/v1/ws", "/v1/yjs/")):
            assert named == [], path
            continue
        assert named == sorted(rule.any_of or rule.all_of), (m, path)
        if rule.all_of:           # every scope at once: one requirement naming them all
            assert op["security"] == [{"oauth2": list(rule.all_of)}], (m, path)
        assert op["x-syncopate-app-token"] is (not rule.user), (m, path)
        for code in ("401", "403", "429"):
            assert code in op["responses"], (m, path, code)


# == real answers ====================================================================================

@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("openapi")), port=0, hosts=1,
                      gateway={"rest_rate": 5000, "rest_burst": 5000, "ws_rate": 5000, "ws_burst": 5000})
    srv = await LocalServer(spec, store=MemoryStore()).start()
    yield srv
    await srv.stop()


async def test_served_document_is_the_built_one(server, http):
    async with http.get(f"{server.url}/v1/openapi.json") as r:         # no token
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == DOC


# -- the checker --------------------------------------------------------------------------------------

def _esc(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _deref(pointer: list[str]) -> tuple[dict, list[str]]:
    """The node at `pointer` in DOC, following a non-schema `$ref` (a response, a parameter)."""
    node = DOC
    for p in pointer:
        node = node[p]
    while "$ref" in node:
        pointer = node["$ref"][2:].split("/")
        node = DOC
        for p in pointer:
            node = node[p]
    return node, pointer


_validators: dict[str, Draft202012Validator] = {}


def validate(pointer: list[str], instance, what: str) -> None:
    """Validate against the schema at `pointer` in DOC, its $refs resolved within DOC."""
    ref = BASE + "#/" + "/".join(_esc(p) for p in pointer)
    v = _validators.get(ref)
    if v is None:
        v = _validators[ref] = Draft202012Validator({"$ref": ref}, registry=REGISTRY, format_checker=FormatChecker())
    errors = sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{what}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors[:5])


ERROR_SCHEMA = ["components", "schemas", "ErrorResponse"]


class Api:
    """Calls the server, checking each request against the document (valid requests only) and every
    answer: its status must be listed (a success exactly, an error by code, range or default) and its
    body must validate against that response's schema (no content described: an empty body)."""

    def __init__(self, server, http) -> None:
        self.server, self.http = server, http
        self.succeeded: set[tuple[str, str]] = set()
        self.failed_tags: set[str] = set()

    def token(self, method: str, template: str, user: str) -> str:
        """The weakest token the document says is enough: an app-only token where it allows one, else
        the user's token with just the first scope it names (or none)."""
        op = DOC["paths"][template][method]
        if op.get("x-syncopate-app-token"):
            return self.server.auth.mint_app("openapi-test-app")
        named = op["security"][0].get("oauth2", []) if op["security"] else []
        return self.server.auth.mint(user, scope=frozenset(named))

    async def call(self, method: str, template: str, user: str | None = None, *, path: dict | None = None,
                   query: dict | None = None, body=None, token: str | None = None, expect: int) -> object:
        op = DOC["paths"][template][method]
        where = f"{method.upper()} {template}"
        if 200 <= expect < 300:
            self.check_request(op, where, path or {}, query or {}, body)
        if token is None and user is not None:
            token = self.token(method, template, user)
        url = template
        for k, v in (path or {}).items():
            url = url.replace("{" + k + "}", v)
        assert "{" not in url, (where, url)
        url = self.server.url + url + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kw = {"data": orjson.dumps(body), "headers": {**headers, "Content-Type": "application/json"}} \
            if body is not None else {"headers": headers}
        async with self.http.request(method.upper(), url, **kw) as r:
            status, raw, ctype = r.status, await r.read(), r.content_type
        data = self.check_response(op, template, method, status, raw, ctype, where)
        assert status == expect, (where, status, data)
        if status < 300:
            self.succeeded.add((method, template))
        else:
            self.failed_tags.update(op.get("tags", []))
        return data

    def check_request(self, op: dict, where: str, path: dict, query: dict, body) -> None:
        params = [self._param(p) for p in op.get("parameters", [])]
        declared = {(p["in"], p["name"]): p for p in params}
        for name in path:
            assert ("path", name) in declared, f"{where}: path parameter {name} not described"
        for name, value in query.items():
            p = declared.get(("query", name))
            assert p is not None, f"{where}: query parameter {name} not described"
            schema = p.get("schema", {})
            if schema.get("type") == "integer":
                value = int(value)
            elif schema.get("type") == "array":          # style form, explode false: comma-separated
                value = value.split(",")
            elif schema.get("type") == "boolean":
                value = {"true": True, "false": False}[value]
            errors = list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(value))
            assert not errors, f"{where}: query {name}={value!r}: {errors[0].message}"
        for (loc, name), p in declared.items():
            if p.get("required") and loc in ("query", "path"):
                assert name in (query if loc == "query" else path), f"{where}: required {loc} {name} missing"
        rb = op.get("requestBody")
        if body is not None:
            assert rb is not None, f"{where}: sends a body the document does not describe"
            validate(self._body_pointer(op), body, f"{where} request body")
        elif rb is not None and rb.get("required"):
            raise AssertionError(f"{where}: the document requires a body")

    @staticmethod
    def _param(p: dict) -> dict:
        if "$ref" in p:
            return _deref(p["$ref"][2:].split("/"))[0]
        return p

    @staticmethod
    def _body_pointer(op: dict) -> list[str]:
        for template, item in DOC["paths"].items():
            for m, o in item.items():
                if o is op:
                    return ["paths", template, m, "requestBody", "content", "application/json", "schema"]
        raise KeyError(op.get("operationId"))

    def check_response(self, op, template, method, status, raw, ctype, where):
        responses = op["responses"]
        key = str(status)
        if key not in responses:
            assert status >= 400, f"{where}: status {status} is not described"
            key = f"{status // 100}XX" if f"{status // 100}XX" in responses else "default"
            assert key in responses, f"{where}: status {status} is not described"
        resp, ptr = _deref(["paths", template, method, "responses", key])
        content = resp.get("content")
        if not content:
            assert raw == b"", f"{where} {status}: the document describes no body, got {raw[:200]!r}"
            return None
        assert ctype == "application/json" and "application/json" in content, (where, status, ctype)
        data = orjson.loads(raw)
        validate([*ptr, "content", "application/json", "schema"], data, f"{where} {status}")
        if status >= 400:
            validate(ERROR_SCHEMA, data, f"{where} {status} (the error shape)")
        return data


# -- every operation, once, with a valid request; an error per family ------------------------------

WS_HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}


async def handshake(api: Api, template: str, path: dict, token: str) -> None:
    """A websocket operation: the upgrade answers 101 (as the document says), then the socket closes."""
    url = template
    for k, v in path.items():
        url = url.replace("{" + k + "}", v)
    headers = {**WS_HANDSHAKE, "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode()}
    async with api.http.get(f"{api.server.url}{url}?token={token}", headers=headers) as r:
        assert r.status == 101, (template, r.status)
        assert str(r.status) in DOC["paths"][template]["get"]["responses"]
    api.succeeded.add(("get", template))


async def test_every_operation_answers_as_described(server, http, unique):
    api = Api(server, http)
    cat = server.gateway.ctx.catalog
    me, other = unique, unique + "b"
    full = server.auth.mint(me)
    admin = {"Authorization": f"Bearer {server.auth.mint_operator()}"}
    for uid in (me, other):
        async with http.post(f"{server.url}/admin/users", headers=admin, json={"id": uid, "display_name": uid}) as r:
            assert r.status == 201, await r.text()
    album = next(a for a in cat.albums if len(a.track_ids) >= 3)
    artist = album.artist_ids[0]
    tracks = [t for t in cat.tracks if t.duration_ms >= 60_000][:6]
    t = [x.id for x in tracks]
    uris = [x.uri for x in tracks]
    word = tracks[0].name.split()[0]

    # catalog
    await api.call("get", "/v1/tracks/{id}", me, path={"id": t[0]}, expect=200)
    await api.call("get", "/v1/tracks/{id}", me, path={"id": "not-an-id"}, expect=400)
    await api.call("get", "/v1/tracks/{id}", me, path={"id": "Z" * 22}, expect=404)
    await api.call("get", "/v1/tracks", me, query={"ids": ",".join(t[:2])}, expect=200)
    await api.call("get", "/v1/albums/{id}", me, path={"id": album.id}, expect=200)
    await api.call("get", "/v1/albums/{id}", me, path={"id": "Z" * 22}, expect=404)
    await api.call("get", "/v1/albums", me, query={"ids": album.id}, expect=200)
    await api.call("get", "/v1/albums/{id}/tracks", me, path={"id": album.id}, query={"limit": "2"}, expect=200)
    await api.call("get", "/v1/artists/{id}", me, path={"id": artist}, expect=200)
    await api.call("get", "/v1/artists/{id}", me, path={"id": "Z" * 22}, expect=404)
    await api.call("get", "/v1/artists", me, query={"ids": artist}, expect=200)
    await api.call("get", "/v1/artists/{id}/albums", me, path={"id": artist}, query={"limit": "5"}, expect=200)
    await api.call("get", "/v1/artists/{id}/top-tracks", me, path={"id": artist}, expect=200)
    await api.call("get", "/v1/search", me, query={"q": word, "type": "track,album,artist", "limit": "3"},
                   expect=200)
    await api.call("get", "/v1/search", me, query={"q": word}, expect=400)

    # users
    await api.call("get", "/v1/me", me, expect=200)
    await api.call("get", "/v1/me", me, token=full, expect=200)          # every field: country, email, ...
    await api.call("get", "/v1/users/{user_id}", me, path={"user_id": other}, expect=200)
    await api.call("get", "/v1/users/{user_id}", me, path={"user_id": "nobody" + unique}, expect=404)

    # playlists
    pl = await api.call("post", "/v1/me/playlists", me, body={"name": "Road trip", "public": True}, expect=201)
    pid = pl["id"]
    await api.call("post", "/v1/users/{user_id}/playlists", me, path={"user_id": me},
                   body={"name": "Second", "description": "two", "public": False}, expect=201)
    await api.call("post", "/v1/me/playlists", me, body={"description": "no name"}, expect=400)
    P = {"playlist_id": pid}
    await api.call("post", "/v1/playlists/{playlist_id}/items", me, path=P, body={"uris": uris[:3]}, expect=201)
    await api.call("post", "/v1/playlists/{playlist_id}/tracks", me, path=P, body={"uris": uris[3:4]}, expect=201)
    await api.call("post", "/v1/playlists/{playlist_id}/tracks", path=P, body={"uris": uris[3:4]}, expect=401)
    await api.call("get", "/v1/me/playlists", me, expect=200)
    await api.call("get", "/v1/users/{user_id}/playlists", me, path={"user_id": me}, expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}", me, path=P, expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}", me, path={"playlist_id": "bad!id"}, expect=400)
    await api.call("put", "/v1/playlists/{playlist_id}", me, path=P, body={"name": "Road trip II"}, expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}/items", me, path=P, query={"limit": "10"}, expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}/tracks", me, path=P, expect=200)
    await api.call("put", "/v1/playlists/{playlist_id}/items", me, path=P,
                   body={"range_start": 0, "insert_before": 2}, expect=200)
    await api.call("put", "/v1/playlists/{playlist_id}/tracks", me, path=P, body={"uris": uris[:4]}, expect=200)
    await api.call("delete", "/v1/playlists/{playlist_id}/items", me, path=P, body={"items": [{"uri": uris[0]}]},
                   expect=200)
    await api.call("delete", "/v1/playlists/{playlist_id}/tracks", me, path=P, body={"tracks": [{"uri": uris[1]}]},
                   expect=200)
    C = {"playlist_id": pid, "user_id": other}
    await api.call("put", "/v1/playlists/{playlist_id}/collaborators/{user_id}", me, path=C, body={"role": "editor"},
                   expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}/collaborators", me, path=P, expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}/collaborators", other, path=P, expect=403)
    await api.call("delete", "/v1/playlists/{playlist_id}/collaborators/{user_id}", me, path=C, expect=200)
    await api.call("put", "/v1/playlists/{playlist_id}/followers", other, path=P, body={"public": True}, expect=200)
    await api.call("get", "/v1/playlists/{playlist_id}/followers/contains", other, path=P, query={"ids": other},
                   expect=200)
    await api.call("delete", "/v1/playlists/{playlist_id}/followers", other, path=P, expect=200)

    # library
    L = {"uris": ",".join(uris[:2])}
    await api.call("put", "/v1/me/library", me, query=L, expect=200)
    await api.call("get", "/v1/me/library/contains", me, query=L, expect=200)
    await api.call("delete", "/v1/me/library", me, query=L, expect=200)
    await api.call("put", "/v1/me/library", me, query={"uris": "spotify:track:bad"}, expect=400)
    for kind, ids in (("tracks", t[:2]), ("albums", [album.id])):
        q = {"ids": ",".join(ids)}
        await api.call("put", f"/v1/me/{kind}", me, query=q, expect=200)
        await api.call("get", f"/v1/me/{kind}", me, query={"limit": "5"}, expect=200)
        await api.call("get", f"/v1/me/{kind}/contains", me, query=q, expect=200)
        await api.call("delete", f"/v1/me/{kind}", me, query=q, expect=200)
    await api.call("get", "/v1/me/tracks/contains", me, query={"ids": ""}, expect=400)
    F = {"type": "artist", "ids": artist}
    await api.call("put", "/v1/me/following", me, query=F, expect=204)
    await api.call("get", "/v1/me/following", me, query={"type": "artist", "limit": "5"}, expect=200)
    await api.call("get", "/v1/me/following/contains", me, query=F, expect=200)
    await api.call("delete", "/v1/me/following", me, query=F, expect=204)

    # player: a Connect device on the websocket, then every command
    await api.call("get", "/v1/me/player", me, expect=204)               # no device yet
    dev = await Device(http, server.url, full, "desk", name="Desk", type="computer").connect()
    try:
        await dev.register()
        await api.call("get", "/v1/me/player/devices", me, expect=200)
        await api.call("put", "/v1/me/player", me, body={"device_ids": ["desk"], "play": False}, expect=204)
        await api.call("put", "/v1/me/player/play", me, body={"uris": uris[:4], "position_ms": 0}, expect=204)
        await api.call("get", "/v1/me/player", me, expect=200)
        await api.call("get", "/v1/me/player/currently-playing", me, expect=200)
        await api.call("put", "/v1/me/player/pause", me, query={"device_id": "desk"}, expect=204)
        await api.call("put", "/v1/me/player/play", me, expect=204)          # resume: no body
        await api.call("post", "/v1/me/player/next", me, expect=204)
        await api.call("post", "/v1/me/player/previous", me, expect=204)
        await api.call("put", "/v1/me/player/seek", me, query={"position_ms": "1000"}, expect=204)
        await api.call("put", "/v1/me/player/seek", me, query={"position_ms": "soon"}, expect=400)
        await api.call("put", "/v1/me/player/repeat", me, query={"state": "context"}, expect=204)
        await api.call("put", "/v1/me/player/volume", me, query={"volume_percent": "40"}, expect=204)
        await api.call("put", "/v1/me/player/shuffle", me, query={"state": "true"}, expect=204)
        await api.call("post", "/v1/me/player/queue", me, query={"uri": uris[5]}, expect=204)
        await api.call("get", "/v1/me/player/queue", me, expect=200)
        await api.call("get", "/v1/me/player/recently-played", me, query={"limit": "5"}, expect=200)
        await api.call("get", "/v1/me/player/stream-counts", me, query={"uris": uris[0]}, expect=200)
        await api.call("get", "/v1/me/player/stream-counts", me, query={"uris": "spotify:album:x"}, expect=400)
        # listening events (docs/events.md): an offline upload, the private session
        played = int(time.time() * 1000) - 3_600_000
        await api.call("post", "/v1/me/player/events", me, body={"events": [
            {"event_id": "ev1", "device_id": "phone", "uri": uris[0], "played_at_ms": played, "ms_played": 45_000}]},
            expect=200)
        await api.call("post", "/v1/me/player/events", me, body={"events": []}, expect=400)
        await api.call("put", "/v1/me/player/private-session", me, query={"state": "true"}, expect=204)
        await api.call("put", "/v1/me/player/private-session", me, query={"state": "maybe"}, expect=400)
        # sessions: the device's connection is listed; signing another device out
        await api.call("get", "/v1/me/sessions", me, expect=200)
        await api.call("delete", "/v1/me/sessions/{device_id}", me, path={"device_id": "old-phone"}, expect=200)
        await api.call("delete", "/v1/me/sessions/{device_id}", me, path={"device_id": "x" * 201}, expect=400)
    finally:
        await dev.close()

    # data rights: the export; a deletion refused, and one done (a user of its own: gone after it)
    await api.call("get", "/v1/me/data-export", me, expect=200)
    await api.call("delete", "/v1/me", me, body={"confirm_user_id": other}, expect=403)
    gone = unique + "gone"
    await api.call("delete", "/v1/me", gone, body={"confirm_user_id": gone}, expect=200)

    # the websockets, and this document
    await handshake(api, "/v1/ws", {}, full)
    await handshake(api, "/v1/yjs/playlists/{playlist_id}", P, full)
    app_token = server.auth.mint_app("openapi-test-app")
    await api.call("get", "/v1/ws", token=app_token, expect=401)
    await api.call("get", "/v1/yjs/playlists/{playlist_id}", path=P, token=app_token, expect=401)
    await api.call("get", "/v1/openapi.json", expect=200)

    every = {(m, p) for p, m, _ in operations()}
    assert every - api.succeeded == set(), "operations never called successfully"
    tags = {tag for _, _, op in operations() for tag in op.get("tags", [])} - {"Meta"}
    assert tags - api.failed_tags == set(), "families with no error answer checked"


def test_the_checker_refuses_what_the_document_does_not_allow():
    """The answer checks can fail: a wrong type deep in a Spotify object, an undescribed success
    status, a body where none is described, an error outside Spotify's shape."""
    api = Api(None, None)
    op = DOC["paths"]["/v1/tracks/{id}"]["get"]
    with pytest.raises(AssertionError, match="duration_ms"):
        api.check_response(op, "/v1/tracks/{id}", "get", 200, orjson.dumps({"duration_ms": "long"}),
                           "application/json", "t")
    with pytest.raises(AssertionError, match="not described"):
        api.check_response(op, "/v1/tracks/{id}", "get", 201, b"{}", "application/json", "t")
    pause = DOC["paths"]["/v1/me/player/pause"]["put"]
    with pytest.raises(AssertionError, match="no body"):
        api.check_response(pause, "/v1/me/player/pause", "put", 204, b"{}", "application/json", "t")
    with pytest.raises(AssertionError):
        api.check_response(op, "/v1/tracks/{id}", "get", 404, orjson.dumps({"message": "gone"}),
                           "application/json", "t")
    with pytest.raises(AssertionError, match="not described"):
        api.check_request(pause, "PUT pause", {}, {"bogus": "1"}, None)
