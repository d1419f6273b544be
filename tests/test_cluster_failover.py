"""Node loss and elastic hosts on a real multi-node Ray cluster (raylets on this machine,
tests/support/cluster.py), PostgreSQL store, REST writes through a gateway on a surviving node:

* a worker node holding a host is killed (kill -9 of its raylet) under load: writes to every
  playlist succeed again within 5 s (the gateway detects the host itself, takes it out of the
  membership view, and its playlists are taken over once its lease has run out), no client request
  fails, and every acknowledged change is there afterwards, exactly once;
* the host Ray restarts on a surviving node rejoins the view by itself (issue #13);
* `POST /admin/hosts {"add": 1}` (what `syncopate hosts add 1` sends) under load: entities move to
  the new host with no failed request and no read, through another gateway, behind an
  acknowledged write.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.cluster import RayNodes, ServeProcess, actor_nodes

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]    # node loss, Ray's restart of its host, a host added

PLAYLISTS = 8


@pytest.fixture(scope="module")
def nodes():
    with RayNodes(cpus_per_node=1).start(3) as n:
        yield n


def request(method: str, url: str, token: str, body=None, key: str | None = None, timeout: float = 30.0):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None


class Writer(threading.Thread):
    """Adds one track at a time to its playlist through `url`, each add retried with its
    Idempotency-Key until acknowledged (as a client does); after each acknowledgement it reads the
    playlist through `read_url` (another gateway) and records a read behind the write as stale."""

    def __init__(self, url: str, read_url: str, token: str, pid: str, uri: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.read_url, self.token, self.pid, self.uri, self.stop = url, read_url, token, pid, uri, stop
        self.tag = uuid.uuid4().hex[:6]
        self.acked = 0
        self.acks: list[tuple[float, float]] = []
        self.failures: list[str] = []
        self.stale: list[tuple[int, int]] = []
        self.read_retries: list = []

    def run(self) -> None:
        while not self.stop.is_set():
            key, sent = f"{self.pid}-{self.tag}-{self.acked + 1}", time.monotonic()
            while True:
                try:
                    status, _ = request("POST", f"{self.url}/v1/playlists/{self.pid}/tracks", self.token,
                                        {"uris": [self.uri]}, key)
                    if status == 201 or status == 200:
                        break
                    self.failures.append(str(status))
                except (urllib.error.URLError, OSError) as exc:
                    self.failures.append(getattr(exc, "code", None) and str(exc.code) or type(exc).__name__)
                time.sleep(0.05)
            self.acked += 1
            self.acks.append((sent, time.monotonic()))
            while not self.stop.is_set():
                try:
                    _, page = request("GET", f"{self.read_url}/v1/playlists/{self.pid}/tracks?limit=1", self.token)
                except (urllib.error.URLError, OSError) as exc:
                    # A read lost with its host is failed retryably (503: it has no op id, and the
                    # gateway re-sends only what can't apply twice); the client reads again.
                    self.read_retries.append(getattr(exc, "code", None) or type(exc).__name__)
                    time.sleep(0.05)
                    continue
                if page["total"] < self.acked:
                    self.stale.append((page["total"], self.acked))
                break
            # Pacing, not synchronisation: every writer writes as one user (alice), and the gateway
            # limits a user to 100 REST requests/s (burst 200). 8 writers x 5 loops/s x 2 requests
            # stay under it on a quiet machine, where unpaced loops drew 429s.
            time.sleep(0.2)


def setup_playlists(url: str, token: str) -> tuple[list[str], str]:
    _, found = request("GET", f"{url}/v1/search?q=a&type=track&limit=1", token)
    uri = found["tracks"]["items"][0]["uri"]
    pids = [request("POST", f"{url}/v1/me/playlists", token, {"name": f"p{i}"}, f"create-{i}")[1]["id"]
            for i in range(PLAYLISTS)]
    return pids, uri


def run_writers(urls: tuple[str, str], token: str, pids: list[str], uri: str, during, after_s: float):
    stop = threading.Event()
    writers = [Writer(urls[0], urls[1], token, pid, uri, stop) for pid in pids]
    for w in writers:
        w.start()
    time.sleep(2.0)                                  # under load first
    t_event = during()
    time.sleep(after_s)
    stop.set()
    for w in writers:
        w.join(60)
    return writers, t_event


def totals(url: str, token: str, pids: list[str]) -> list[int]:
    return [request("GET", f"{url}/v1/playlists/{pid}/tracks?limit=1", token)[1]["total"] for pid in pids]


HOSTS = 2


def test_a_node_killed_under_load_recovers_in_seconds_and_loses_nothing(nodes, tmp_path):
    from gateway.auth import Auth, load_secret
    # 2 hosts on 3 nodes: more nodes than hosts, so the hosts are STRICT_SPREAD (a hard guarantee, not
    # SPREAD's best effort, which put all 3 of 3 hosts on the head in some runs): a worker holds one,
    # and the killed node's host has a spare node to restart on.
    srv = ServeProcess(nodes, tmp_path, hosts=HOSTS).start()
    try:
        head = next(n for n in nodes.nodes if n.head)
        placed = actor_nodes(nodes, srv)
        hosts_on = {w.node_id: sum(1 for k, v in placed.items() if k.startswith("host-") and v == w.node_id)
                    for w in nodes.workers()}
        victim = max(nodes.workers(), key=lambda w: hosts_on[w.node_id])
        assert hosts_on[victim.node_id] == 1, placed                   # one host per node
        other = next(n for n in nodes.workers() if n is not victim)
        urls = (srv.gateways[head.node_id], srv.gateways[other.node_id])
        token = Auth(load_secret(str(tmp_path))).mint("alice")
        pids, uri = setup_playlists(urls[0], token)

        writers, t_kill = run_writers(urls, token, pids, uri, lambda: nodes.kill_node(victim), 6.0)
        # The longest any playlist went without an acknowledgement, from the kill on.
        recovery = max(max(b - a for a, b in zip([t_kill] + acked, acked)) for w in writers
                       for acked in [[a for _, a in w.acks if a >= t_kill]])
        print(f"node loss: writes to all {PLAYLISTS} playlists succeed again {recovery:.2f} s after the kill; "
              f"{sum(w.acked for w in writers)} acknowledged")
        assert recovery <= 5.0, recovery
        assert [w.failures for w in writers] == [[]] * PLAYLISTS
        assert [w.stale for w in writers] == [[]] * PLAYLISTS
        assert totals(urls[0], token, pids) == [w.acked for w in writers]     # zero loss, nothing twice

        # Ray restarts the dead node's host on a surviving node: it rejoins the view by itself
        op = Auth(load_secret(str(tmp_path))).mint_operator()
        deadline = time.monotonic() + 90
        while (before := request("GET", f"{urls[0]}/admin/hosts", op)[1])["hosts"] != list(range(HOSTS)):
            assert time.monotonic() < deadline, f"the restarted host did not rejoin the view: {before}"
            time.sleep(0.2)                      # polling the operator API: no event to wait on

        # elastic: one more host, under load; the entities it now owns move to it

        def add_host():
            status, body = request("POST", f"{urls[0]}/admin/hosts", op, {"add": 1})
            assert status == 202
            deadline = time.monotonic() + 90
            while len(request("GET", f"{urls[0]}/admin/hosts", op)[1]["hosts"]) < len(before["hosts"]) + 1:
                assert time.monotonic() < deadline, "the new host did not join the view:\n" + "\n".join(
                    line for line in srv.output().splitlines() if "host" in line)[-6000:]
                time.sleep(0.2)
            return time.monotonic()

        writers2, _ = run_writers(urls, token, pids, uri, add_host, 3.0)
        _, after = request("GET", f"{urls[0]}/admin/hosts", op)
        assert len(after["hosts"]) == len(before["hosts"]) + 1 and after["epoch"] > before["epoch"]
        assert [w.failures for w in writers2] == [[]] * PLAYLISTS
        assert [w.stale for w in writers2] == [[]] * PLAYLISTS
        assert totals(urls[0], token, pids) == [w.acked + w2.acked for w, w2 in zip(writers, writers2)]
    finally:
        srv.stop()
