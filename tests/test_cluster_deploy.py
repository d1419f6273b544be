"""`syncopate serve --ray-address` on a real multi-node Ray cluster (raylets on this machine,
tests/support/cluster.py): the store must fit the deployment, one gateway per node (also for a node
that joins later, and none left for a node that dies), /healthz per gateway, hosts spread hard.

One cluster for the module (starting a raylet costs ~10 s on 2 cores); each test starts its own
server (its own data dir, its own PostgreSQL table prefix) and stops it.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from tests.support.cluster import GATEWAY_GONE, RayNodes, ServeProcess, actor_nodes

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

@pytest.fixture(scope="module")
def nodes():
    with RayNodes(cpus_per_node=1).start(3) as n:
        yield n


def get_json(url: str, token: str | None = None, timeout: float = 10.0):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def put_json(url: str, body, token: str, timeout: float = 10.0) -> int:
    req = urllib.request.Request(url, method="PUT", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


def token(data_dir, user: str) -> str:
    from gateway.auth import Auth, load_secret
    return Auth(load_secret(data_dir)).mint(user)


def test_sqlite_is_refused_on_a_cluster(nodes, tmp_path):
    srv = ServeProcess(nodes, tmp_path, hosts=1, postgres_dsn=None).spawn()
    assert srv.wait_exit(120) == 2
    out = srv.output()
    assert "--shared-data-dir" in out and "--postgres-dsn" in out and "empty database" in out
    assert not (tmp_path / "syncopate.db").exists()          # refused before anything was opened


def test_an_unchosen_listen_address_is_refused_on_a_cluster(nodes, tmp_path):
    srv = ServeProcess(nodes, tmp_path, hosts=1, host=None).spawn()
    assert srv.wait_exit(120) == 2
    assert "choose where gateways listen with --host" in srv.output()


def test_sqlite_on_an_asserted_shared_dir_is_checked_by_every_host(nodes, tmp_path):
    """--shared-data-dir: each host (2 hosts on 3 nodes: STRICT_SPREAD, so on two different nodes)
    finds the driver's marker, and a write through one node's gateway reads back through another's,
    from the one database file."""
    srv = ServeProcess(nodes, tmp_path, hosts=2, postgres_dsn=None, args=["--shared-data-dir"]).start()
    try:
        assert "spread best effort" not in srv.output()
        marker = json.loads((tmp_path / ".syncopate-shared-data-dir").read_text())
        assert len(marker["token"]) == 32
        placed = actor_nodes(nodes, srv)
        hosts = {k: v for k, v in placed.items() if re.fullmatch(r"host-\d+", k)}
        assert len(hosts) == 2 and len(set(hosts.values())) == 2     # two nodes, each host checked the dir
        assert len(srv.gateways) == 3
        a, b, _ = srv.gateways.values()
        tok = token(tmp_path, "shared-dir-user")
        from catalog import Catalog
        ids = Catalog.generated().track_ids[:3]       # the catalog the server generates too
        assert put_json(f"{a}/v1/me/tracks", {"ids": ids}, tok) == 200
        status, page = get_json(f"{b}/v1/me/tracks", tok)
        assert status == 200 and sorted(i["track"]["id"] for i in page["items"]) == sorted(ids)
        assert (tmp_path / "syncopate.db").exists()
    finally:
        srv.stop()


@pytest.mark.timeout(480)       # it waits out Ray's restart of the dead node's hosts, and a raylet start
def test_a_gateway_per_node_with_its_own_healthz_also_for_a_node_that_joins(nodes, tmp_path):
    """3 hosts on 3 nodes: no spare node for a strict spread, so SPREAD with a warning. A gateway
    on each node; a node that dies (one holding a host) loses its gateway, and the others keep
    answering; the hosts that were on it, restarted by Ray on the surviving nodes, join the
    membership view again by themselves (issue #13: the gateways had removed their slots, so no
    one called them), and every gateway reaches every slot again; a node that joins gets a
    gateway, reaching every slot too. At most 3 raylets run at once."""
    srv = ServeProcess(nodes, tmp_path, hosts=3).start()
    try:
        assert "3 hosts on 3 live nodes: hosts spread best effort (SPREAD)" in srv.output()
        live = {n.node_id for n in nodes.nodes if n.alive}
        assert set(srv.gateways) == live and len(srv.urls) == 3
        for node_id, url in srv.gateways.items():
            status, h = get_json(f"{url}/healthz")
            assert status == 200 and h["ok"] is True
            assert h["node_id"] == node_id and h["reachable_hosts"] == [0, 1, 2]
        placed = actor_nodes(nodes, srv)
        gws = {k: v for k, v in placed.items() if k.startswith("gw-n")}
        assert sorted(gws.values()) == sorted(live)                 # each gateway pinned to its node

        # a worker node holding a host dies: its gateway is forgotten, the others answer for every
        # host again once Ray restarted the dead node's hosts elsewhere and they rejoined the view
        hosts_on = {w.node_id: sum(1 for k, v in placed.items() if re.fullmatch(r"host-\d+", k) and v == w.node_id)
                    for w in nodes.workers()}
        victim = max(nodes.workers(), key=lambda w: hosts_on[w.node_id])
        assert hosts_on[victim.node_id] >= 1, placed                   # SPREAD put a host on a worker
        dead_url = srv.gateways[victim.node_id]
        nodes.kill_node(victim)
        srv.wait_line(re.compile(GATEWAY_GONE.pattern.replace("([0-9a-f]+)", victim.node_id)), timeout=90)
        assert victim.node_id not in srv.gateways and len(srv.gateways) == 2
        with pytest.raises(urllib.error.URLError):
            get_json(f"{dead_url}/healthz", timeout=3)
        for node_id, u in srv.gateways.items():
            wait_healthy(u, node_id, {0, 1, 2}, timeout=90)

        # a node that joins gets its gateway; it reaches every host
        joined = nodes.add_node()
        url = srv.wait_gateway(joined.node_id, timeout=90)
        wait_healthy(url, joined.node_id, {0, 1, 2}, timeout=60)
    finally:
        srv.stop()


def wait_healthy(url: str, node_id: str, hosts: set[int], timeout: float) -> dict:
    """Poll the gateway's /healthz until it answers 200 for `node_id`, reaching exactly `hosts`
    (deadline)."""
    import time
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            status, h = get_json(f"{url}/healthz", timeout=5)
            last = h
            if status == 200 and h["node_id"] == node_id and sorted(hosts) == h["reachable_hosts"]:
                return h
        except urllib.error.HTTPError as exc:       # 503 while a host is down: its body says which
            last = json.loads(exc.read() or b"null")
        time.sleep(0.5)             # polling a health endpoint: there is no event to wait on
    raise AssertionError(f"{url} not healthy for node {node_id[:12]} in {timeout:.0f} s: {last}")


def test_joining_without_token_auth_says_what_ray_needs(nodes, tmp_path):
    srv = ServeProcess(nodes, tmp_path, hosts=1)
    env = nodes.env()
    del env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"]
    srv.spawn(env=env)
    assert srv.wait_exit(120) == 2
    out = srv.output()
    assert f"could not join the Ray cluster at {nodes.address}" in out and "RAY_AUTH_MODE=token" in out
