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
import uuid
from urllib.parse import urlencode

import aiohttp
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
                 ("put", "/v1/playlists/{playlist_id}/collaborators/{user_id}"), ("get", "/v1/ws")]:
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
        assert named == sorted(rule.any_of), (m, path)
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
