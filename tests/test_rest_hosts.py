"""The operator API for elastic hosts (gateway/rest_hosts.py) on an in-process server with a
membership view: what it queues for the driver, and what it refuses (changing nothing). The Ray
driver carrying a request out: tests/test_cluster_failover.py (add), RayServer.remove_slots."""
from __future__ import annotations

import pytest

# imported here, not inside the event loop (their imports read files: blockbuster refuses that)
import actors.local  # noqa: F401
import actors.ray_host  # noqa: F401
import gateway.openapi
import gateway.runner  # noqa: F401
import syncopate.events.service  # noqa: F401

gateway.openapi.document_bytes()        # built (from files) once, here
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.servers import REST_FAST, admin_headers


@pytest.fixture
async def server(tmp_path):
    srv = await LocalServer(ServerSpec(data_dir=str(tmp_path), port=0, hosts=3, kinds="tests.toy:kinds",
                                       gateway=dict(REST_FAST)), store=MemoryStore(), membership="m").start()
    srv.requests = []
    srv.gateway.ctx.host_control = srv.requests.append      # what the driver would take
    try:
        yield srv
    finally:
        await srv.stop()


async def post(http, server, body):
    r = await http.post(f"{server.url}/admin/hosts", json=body, headers=admin_headers(server))
    return r.status, await r.json()


async def test_a_named_slot_can_be_removed(server, http):
    status, body = await post(http, server, {"remove_slot": 1})
    assert status == 202 and body["requested"] == {"remove_slot": 1} and body["hosts"] == [0, 1, 2]
    assert server.requests == [{"action": "remove_slot", "n": 1, "epoch": body["epoch"]}]
    await server.cluster.remove_host(1)                       # the driver carries it out: slot 1 leaves
    r = await http.get(f"{server.url}/admin/hosts", headers=admin_headers(server))
    assert (await r.json())["hosts"] == [0, 2]


@pytest.mark.parametrize("body, status, code", [
    ({"remove_slot": 7}, 404, "NOT_FOUND"),                   # no such slot in the view
    ({"remove_slot": True}, 400, "INVALID_FIELD"),
    ({"remove_slot": "1"}, 400, "INVALID_FIELD"),
    ({"remove_slot": 1, "add": 1}, 400, "BAD_REQUEST"),
    ({"remove": 3}, 400, "BAD_REQUEST"),                      # at least one must stay
])
async def test_bad_requests_are_refused_and_queue_nothing(server, http, body, status, code):
    got, answer = await post(http, server, body)
    assert (got, answer["error"]["code"]) == (status, code)
    assert server.requests == []


async def test_the_last_host_can_not_be_removed_by_slot(server, http):
    await server.cluster.remove_host(2)
    await server.cluster.remove_host(1)
    got, answer = await post(http, server, {"remove_slot": 0})
    assert (got, answer["error"]["code"]) == (400, "BAD_REQUEST") and server.requests == []
