"""Elastic hosts on the real server (hosts and gateway as Ray actors, one local Ray, SQLite store):
a named slot leaves (`syncopate hosts remove --slot S`), its entities handed to the slots that stay;
a gateway Ray restarts afterwards starts without the removed slot; a slot added later takes a new
number (a removed one's is never reused)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from gateway.auth import Auth
from syncopate.server import RayServer, ServerSpec

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def call(method: str, url: str, token: str, body=None):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}",
                                                              "Content-Type": "application/json"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None


def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pred()
            if got:
                return got
        except (urllib.error.URLError, ConnectionError):
            pass                                  # a gateway restarting
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)                           # polling the server over HTTP: no event to wait on


def test_a_named_slot_leaves_and_a_gateway_restarted_after_starts_without_it(ray_session, tmp_path):
    server = RayServer(ServerSpec(data_dir=str(tmp_path), port=0, hosts=3, log_level="WARNING")).start()
    try:
        from catalog import Catalog
        ids = Catalog.generated().track_ids[:3]
        users = [f"slot-user-{i}" for i in range(12)]              # spread over the three slots
        tokens = {u: Auth(server.secret).mint(u) for u in users}
        op = Auth(server.secret).mint_operator()
        for u in users:
            assert call("PUT", f"{server.url}/v1/me/tracks", tokens[u], {"ids": ids})[0] == 200

        assert server.remove_slots([1]) == [1] and sorted(server.hosts) == [0, 2]
        until(lambda: call("GET", f"{server.url}/admin/hosts", op)[1]["hosts"] == [0, 2], 30, "the view without slot 1")
        for u in users:                                             # every library, wherever it lives now
            _, page = call("GET", f"{server.url}/v1/me/tracks", tokens[u])
            assert sorted(i["track"]["id"] for i in page["items"]) == sorted(ids)

        server.kill_gateway(0)                                      # Ray restarts it: it must start without slot 1
        until(lambda: server.supervise_once(timeout=30) or call("GET", f"{server.url}/healthz", op)[1]["ok"],
              120, "the restarted gateway serving")
        _, h = call("GET", f"{server.url}/healthz", op)
        assert h["reachable_hosts"] == [0, 2]
        _, page = call("GET", f"{server.url}/v1/me/tracks", tokens[users[0]])
        assert sorted(i["track"]["id"] for i in page["items"]) == sorted(ids)

        assert server.add_hosts(1) == [3]                            # a new number, not slot 1 again
        until(lambda: call("GET", f"{server.url}/admin/hosts", op)[1]["hosts"] == [0, 2, 3], 30, "slot 3 in the view")
        with pytest.raises(ValueError, match="no host in slot 1"):
            server.remove_slots([1])
    finally:
        server.stop()
