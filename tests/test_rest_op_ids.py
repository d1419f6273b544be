"""Every REST mutation carries an op id, so a retry of one the gateway gave up on is applied once.

The op id is the client's Idempotency-Key, or one the gateway made for the request; either way the
answer's Idempotency-Key header names it, and a retry sending it back gets the first answer.
"""
import pytest

from gateway.auth import write_secret
from tests.support.servers import memory_server

SECRET = "rest-op-id-secret-0123456789-abcdefghij"


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with memory_server(tmp_path_factory, "opids",
                             secret_file=str(write_secret(tmp_path_factory.mktemp("key") / "secret.key", SECRET))) as srv:
        yield srv


@pytest.fixture
def commands(server, monkeypatch):
    """Every Command the REST modules send to the cluster, as it leaves the gateway context."""
    ctx = server.gateway.ctx
    seen = []
    real = ctx.call_versioned

    async def spy(cmd):
        seen.append(cmd)
        return await real(cmd)

    monkeypatch.setattr(ctx, "call_versioned", spy)
    return seen


def auth(server, user):
    return {"Authorization": f"Bearer {server.auth.mint(user)}"}


def track_uris(server, n):
    return [f"spotify:track:{t.id}" for t in list(server.gateway.ctx.catalog.tracks)[:n]]


async def test_every_rest_mutation_command_carries_an_op_id(server, http, commands, unique):
    h = auth(server, unique)
    r = await http.post(f"{server.url}/v1/me/playlists", headers=h, json={"name": "mix"})
    assert r.status == 201, await r.text()
    pid = (await r.json())["id"]
    uri = track_uris(server, 1)[0]
    mutations = [
        ("PUT", f"/v1/playlists/{pid}", {"name": "renamed"}),
        ("POST", f"/v1/playlists/{pid}/tracks", {"uris": [uri]}),
        ("PUT", f"/v1/playlists/{pid}/tracks", {"uris": [uri, uri]}),
        ("PUT", f"/v1/playlists/{pid}/tracks", {"range_start": 1, "insert_before": 0}),
        ("DELETE", f"/v1/playlists/{pid}/tracks", {"tracks": [{"uri": uri}]}),
        ("PUT", f"/v1/me/library?uris={uri}", None),
        ("DELETE", f"/v1/me/library?uris={uri}", None),
        ("PUT", f"/v1/me/tracks?ids={uri.rsplit(':', 1)[1]}", None),
        ("PUT", f"/v1/playlists/{pid}/followers", None),
        ("PUT", "/v1/me/player/pause", None),          # refused (no device): still an op id
        ("PUT", "/v1/me/player/volume?volume_percent=10", None),
        ("DELETE", "/v1/me/sessions/some-device", None),
    ]
    for method, path, body in mutations:
        commands.clear()
        r = await http.request(method, f"{server.url}{path}", headers=h, json=body)
        await r.read()
        sent = [c for c in commands if c.principal.user_id == unique]
        assert len(sent) == 1, (method, path, commands)
        op = sent[0].op_id
        assert isinstance(op, str) and op.startswith("rest-") and len(op) > 20, (method, path, op)
        assert r.headers["Idempotency-Key"] == op, (method, path, r.status)
    # the two playlist additions above were separate requests: separate op ids
    commands.clear()
    ids = []
    for _ in range(2):
        r = await http.post(f"{server.url}/v1/playlists/{pid}/tracks", headers=h, json={"uris": [uri]})
        assert r.status == 201
        ids.append(r.headers["Idempotency-Key"])
    assert ids[0] != ids[1] and [c.op_id for c in commands] == ids
    # a read carries none
    commands.clear()
    r = await http.get(f"{server.url}/v1/playlists/{pid}/tracks", headers=h)
    assert r.status == 200 and "Idempotency-Key" not in r.headers
    assert commands and all(c.op_id is None for c in commands)


async def test_client_idempotency_key_is_the_op_id(server, http, commands, unique):
    h = {**auth(server, unique), "Idempotency-Key": f"{unique}-k1"}
    r = await http.put(f"{server.url}/v1/me/library?uris={track_uris(server, 1)[0]}", headers=h)
    assert r.status == 200
    assert [c.op_id for c in commands] == [f"{unique}-k1"] and r.headers["Idempotency-Key"] == f"{unique}-k1"
    # refused, not truncated: two long keys sharing a prefix must not become one operation
    commands.clear()
    r = await http.put(f"{server.url}/v1/playlists/xyz/tracks", json={"uris": []},
                       headers={**auth(server, unique), "Idempotency-Key": "k" * 129})
    assert r.status == 400 and (await r.json())["error"]["code"] == "BAD_REQUEST" and commands == []


async def test_retry_with_the_answered_key_is_applied_once(server, http, unique):
    """A mutation answered (or given up on) once: its retry with the answer's key changes nothing."""
    h = auth(server, unique)
    r = await http.post(f"{server.url}/v1/me/playlists", headers=h, json={"name": "once"})
    key = r.headers["Idempotency-Key"]
    first = await r.json()
    r = await http.post(f"{server.url}/v1/me/playlists", headers={**h, "Idempotency-Key": key},
                        json={"name": "once"})
    assert r.status == 201 and (await r.json())["id"] == first["id"]     # the same playlist, not a second
    pid = first["id"]
    uris = track_uris(server, 2)
    r = await http.post(f"{server.url}/v1/playlists/{pid}/tracks", headers=h, json={"uris": uris})
    key, snap = r.headers["Idempotency-Key"], (await r.json())["snapshot_id"]
    r = await http.post(f"{server.url}/v1/playlists/{pid}/tracks", headers={**h, "Idempotency-Key": key},
                        json={"uris": uris})
    assert r.status == 201 and (await r.json())["snapshot_id"] == snap
    r = await http.get(f"{server.url}/v1/playlists/{pid}/tracks", headers=h)
    page = await r.json()
    assert page["total"] == 2 and [it["track"]["uri"] for it in page["items"]] == uris
