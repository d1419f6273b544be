"""Multi-node Ray tests: a cluster of raylets on this machine and `syncopate serve --ray-address` on it.

    @pytest.fixture(scope="module")
    def nodes():
        with RayNodes(cpus_per_node=1).start(3) as n:      # simulations/cluster.py
            yield n

    srv = ServeProcess(nodes, tmp_path, hosts=2).start()   # PostgreSQL store, a table prefix of its own
    srv.gateways                     # {node id: "http://ip:port"}, one per node, as the server reports them
    n = nodes.add_node(); srv.wait_gateway(n.node_id)     # a node that joins gets its gateway
    nodes.kill_node(n)                                      # kill -9 of its raylet
    srv.stop()                                              # SIGTERM, then drops its tables

The server runs as its own process, the way an operator runs it (the CLI, token auth from the
cluster's env): the test process may already be the driver of the session's local Ray (conftest's
`ray_session`), and a process can be the driver of one Ray cluster only. To look inside the
cluster (actor table, node of each actor) use `nodes.driver(code)`, which runs a snippet as a
driver of its own.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

from simulations.cluster import SOURCE_ROOT, Node, RayNodes

__all__ = ["Node", "RayNodes", "ServeProcess", "PG_DSN", "drop_tables"]

PG_DSN = os.environ.get("SYNCOPATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SERVING = re.compile(r"syncopate serving on (\S.*?)\s+hosts=")
GATEWAY = re.compile(r"gateway (\S+) on node ([0-9a-f]+) listening on (http://\S+)")
GATEWAY_GONE = re.compile(r"gateway (\S+) on node ([0-9a-f]+) removed")


class ServeProcess:
    """`python -m syncopate.cli serve --ray-address ...` against a RayNodes cluster."""

    def __init__(self, nodes: RayNodes, data_dir, *, hosts: int = 2, postgres_dsn: str | None = PG_DSN,
                 prefix: str | None = None, host: str | None = "127.0.0.1", args: list[str] | None = None) -> None:
        self.nodes = nodes
        self.data_dir = str(data_dir)
        self.hosts = hosts
        self.postgres_dsn = postgres_dsn
        self.prefix = prefix or f"t{uuid.uuid4().hex[:12]}_"
        self.host = host
        self.extra = list(args or [])
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.gateways: dict[str, str] = {}       # node id -> url, live ones
        self.urls: list[str] = []
        self._cond = threading.Condition()
        self._eof = False

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "syncopate.cli", "serve", "--ray-address", self.nodes.address,
               "--port", "0", "--data-dir", self.data_dir, "--hosts", str(self.hosts), "--log-level", "WARNING"]
        if self.host is not None:        # None: no --host at all (refused on a cluster)
            cmd += ["--host", self.host]
        if self.postgres_dsn:
            cmd += ["--postgres-dsn", self.postgres_dsn, "--table-prefix", self.prefix]
        return cmd + self.extra

    def spawn(self, env: dict | None = None) -> ServeProcess:
        """Start the process without waiting for it to serve (see wait_exit for a refused start)."""
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env or self.nodes.env(), cwd=SOURCE_ROOT, text=True, bufsize=1,
                                     start_new_session=True)
        threading.Thread(target=self._read, name="serve-output", daemon=True).start()
        return self

    def start(self, timeout: float = 120.0) -> ServeProcess:
        self.spawn()
        m = self.wait_line(SERVING, timeout)
        self.urls = m.group(1).split()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                if m := GATEWAY.search(line):
                    self.gateways[m.group(2)] = m.group(3)
                elif m := GATEWAY_GONE.search(line):
                    self.gateways.pop(m.group(2), None)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern: re.Pattern, timeout: float = 60.0) -> re.Match:
        """The first output line matching `pattern` (waiting for it); fails if the process exits first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := pattern.search(line):
                        return m
                seen = len(self.lines)
                if self._eof:
                    raise RuntimeError(f"serve exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no line matching {pattern.pattern!r} in {timeout:.0f} s:\n{self.output()[-4000:]}")
                self._cond.wait(min(left, 0.5))

    def wait_gateway(self, node_id: str, timeout: float = 90.0) -> str:
        """The URL of the gateway on `node_id`, once the server reports it listening."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while node_id not in self.gateways:
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise TimeoutError(f"no gateway on node {node_id[:12]}:\n{self.output()[-4000:]}")
                self._cond.wait(min(left, 0.5))
            return self.gateways[node_id]

    def wait_exit(self, timeout: float = 120.0) -> int:
        rc = self.proc.wait(timeout)
        with self._cond:          # the reader has read everything the process wrote
            self._cond.wait_for(lambda: self._eof, 10)
        return rc

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)       # serve_forever stops the actors and exits
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.postgres_dsn:
            drop_tables(self.postgres_dsn, self.prefix)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


ACTOR_NODES = """
import json
from ray._private.state import state
print(json.dumps({v["Name"]: v["Address"]["NodeID"] for v in state.actor_table(None).values()
                  if v["State"] == "ALIVE" and v["Name"]}))
"""


def actor_nodes(nodes: RayNodes, srv: ServeProcess) -> dict[str, str]:
    """{actor name suffix ("host-0", "gw-n...") -> node id} for this server's live actors."""
    gid = re.search(r"gateway (n[0-9a-f]+) on node", srv.output()).group(1)
    names = json.loads(nodes.driver(ACTOR_NODES))
    cluster = next(k for k in names if k.endswith(f"-gw-{gid}"))[:-len(f"-gw-{gid}")]
    return {k[len(cluster) + 1:]: v for k, v in names.items() if k.startswith(cluster + "-")}


def drop_tables(dsn: str, prefix: str) -> None:
    """Drop a test's tables (from sync code: its own thread and event loop)."""
    from storage.postgres import PostgresStore

    async def go() -> None:
        st = PostgresStore(dsn, prefix=prefix, max_size=1)
        await st.start()
        try:
            await st.drop()
        finally:
            await st.close()

    err: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(go())
        except BaseException as exc:      # noqa: BLE001 - reported below
            err.append(exc)

    th = threading.Thread(target=run)
    th.start()
    th.join(30)
    if err:
        raise err[0]

