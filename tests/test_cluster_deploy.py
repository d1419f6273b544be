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

from tests.support.cluster import GATEWAY_GONE, RayNodes, ServeProcess

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

ACTOR_NODES = """
import json
from ray._private.state import state
print(json.dumps({v["Name"]: v["Address"]["NodeID"] for v in state.actor_table(None).values()
                  if v["State"] == "ALIVE" and v["Name"]}))
"""


@pytest.fixture(scope="module")
def nodes():
    with RayNodes(cpus_per_node=1).start(2) as n:
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


def actor_nodes(nodes: RayNodes, srv: ServeProcess) -> dict[str, str]:
    """{actor name suffix ("host-0", "gw-n...") -> node id} for this server's live actors."""
    gid = re.search(r"gateway (n[0-9a-f]+) on node", srv.output()).group(1)
    names = json.loads(nodes.driver(ACTOR_NODES))
    cluster = next(k for k in names if k.endswith(f"-gw-{gid}"))[:-len(f"-gw-{gid}")]
    return {k[len(cluster) + 1:]: v for k, v in names.items() if k.startswith(cluster + "-")}


def test_sqlite_is_refused_on_a_cluster(nodes, tmp_path):
    srv = ServeProcess(nodes, tmp_path, hosts=1, postgres_dsn=None).spawn()
    assert srv.wait_exit(120) == 2
    out = srv.output()
    assert "--shared-data-dir" in out and "--postgres-dsn" in out and "empty database" in out
    assert not (tmp_path / "syncopate.db").exists()          # refused before anything was opened


def test_an_unchosen_listen_address_is_refused_on_a_cluster(nodes, tmp_path):
    srv = ServeProcess(nodes, tmp_path, hosts=1)
    i = srv.command().index("--host")
    cmd = srv.command()
    del cmd[i:i + 2]
    srv.command = lambda: cmd
    srv.spawn()
    assert srv.wait_exit(120) == 2
    assert "choose where gateways listen with --host" in srv.output()


def test_sqlite_on_an_asserted_shared_dir_is_checked_by_every_host(nodes, tmp_path):
    """--shared-data-dir: each host (on both nodes: 3 hosts on 2 nodes spread best effort, with a
    warning) finds the driver's marker, and a write through one node's gateway reads back through
    the other's, from the one database file."""
    srv = ServeProcess(nodes, tmp_path, hosts=3, postgres_dsn=None, args=["--shared-data-dir"]).start()
    try:
        assert "3 hosts on 2 live nodes: hosts spread best effort (SPREAD)" in srv.output()
        marker = json.loads((tmp_path / ".syncopate-shared-data-dir").read_text())
        assert len(marker["token"]) == 32
        placed = actor_nodes(nodes, srv)
        hosts = {k: v for k, v in placed.items() if re.fullmatch(r"host-\d+", k)}
        assert len(hosts) == 3 and len(set(hosts.values())) == 2     # both nodes run hosts
        assert len(srv.gateways) == 2
        (a, b) = srv.gateways.values()
        tok = token(tmp_path, "shared-dir-user")
        from catalog import Catalog
        ids = Catalog.generated().track_ids[:3]       # the catalog the server generates too
        assert put_json(f"{a}/v1/me/tracks", {"ids": ids}, tok) == 200
        status, page = get_json(f"{b}/v1/me/tracks", tok)
        assert status == 200 and sorted(i["track"]["id"] for i in page["items"]) == sorted(ids)
        assert (tmp_path / "syncopate.db").exists()
    finally:
        srv.stop()


def test_a_gateway_per_node_with_its_own_healthz_and_hosts_on_distinct_nodes(nodes, tmp_path):
    srv = ServeProcess(nodes, tmp_path, hosts=2).start()
    try:
        live = {n.node_id for n in nodes.nodes if n.alive}
        assert set(srv.gateways) == live and len(srv.urls) == 2
        for node_id, url in srv.gateways.items():
            status, h = get_json(f"{url}/healthz")
            assert status == 200 and h["ok"] is True
            assert h["node_id"] == node_id and h["reachable_hosts"] == [0, 1]
        placed = actor_nodes(nodes, srv)
        hosts = [v for k, v in placed.items() if re.fullmatch(r"host-\d+", k)]
        assert len(hosts) == 2 and len(set(hosts)) == 2           # STRICT_SPREAD: one host a node
        gws = {k: v for k, v in placed.items() if k.startswith("gw-n")}
        assert sorted(gws.values()) == sorted(live)                 # each gateway pinned to its node

        # a node that joins gets its gateway; it reaches every host
        joined = nodes.add_node()
        url = srv.wait_gateway(joined.node_id, timeout=90)
        status, h = get_json(f"{url}/healthz")
        assert status == 200 and h["node_id"] == joined.node_id and h["reachable_hosts"] == [0, 1]

        # that node dies: its gateway is forgotten, the others still answer
        nodes.kill_node(joined)
        gone = srv.wait_line(re.compile(GATEWAY_GONE.pattern.replace("([0-9a-f]+)", joined.node_id)), timeout=90)
        assert gone
        assert joined.node_id not in srv.gateways
        with pytest.raises(urllib.error.URLError):
            get_json(f"{url}/healthz", timeout=3)
        for node_id, u in srv.gateways.items():
            status, h = get_json(f"{u}/healthz")
            assert status == 200 and h["node_id"] == node_id
    finally:
        srv.stop()
