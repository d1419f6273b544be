"""A multi-node Ray cluster on this machine: one `ray start --block` process per node.

    nodes = RayNodes(cpus_per_node=1).start(3)   # a head and two worker nodes
    nodes.address                                 # what `serve --ray-address` joins
    nodes.env()                                   # the environment a driver needs (token auth)
    n = nodes.add_node()                          # another worker node; returns when it runs
    nodes.kill_node(n)                            # kill -9 of its raylet: an operator's node loss
    nodes.stop()                                  # stops what it started, by pid

What an operator does by hand (docs/operations.md), on one machine: each node is its own raylet
with its own ports and temp dir; the nodes share one cluster auth token (RAY_AUTH_MODE=token, the
token in a file of this cluster's own, RAY_AUTH_TOKEN_PATH: never the user's ~/.ray/auth_token).
Used by the multi-node tests (tests/support/cluster.py) and by `syncopate simulate --nodes N`.

Killing a node is `kill -9` of its raylet: the node's `ray start --block` notices and takes the
node's other processes down with it, and the GCS marks the node dead once its health checks fail
(Ray's default: about 15 s). Only processes this object started are signalled, each by pid.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from simulations.faults import free_port

log = logging.getLogger("syncopate.sim.cluster")

NODE_START_TIMEOUT_S = 60.0
SOURCE_ROOT = str(Path(__file__).resolve().parents[1])


def ray_bin() -> str:
    """The `ray` script of this interpreter's environment."""
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


@dataclass
class Node:
    index: int
    head: bool
    proc: subprocess.Popen          # the node's `ray start --block`
    temp_dir: str
    log_path: str
    node_id: str | None = None      # Ray's hex node id, read from the raylet's command line
    raylet_pid: int | None = None
    procs: dict[int, psutil.Process] = field(default_factory=dict)   # every process of the node seen so far
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self.killed


class RayNodes:
    """Raylets on this machine forming one Ray cluster. Blocking calls: use from sync code or a thread."""

    def __init__(self, *, cpus_per_node: int = 1, ip: str = "127.0.0.1", root: str | None = None,
                 system_config_env: dict[str, str] | None = None) -> None:
        self.cpus_per_node = cpus_per_node
        self.ip = ip
        # Short: Ray's unix sockets live under it and a socket path has a ~107-byte limit.
        self.root = root or tempfile.mkdtemp(prefix="synray-", dir="/tmp")
        self._own_root = root is None
        self.port: int | None = None
        self.nodes: list[Node] = []
        self.token_path = os.path.join(self.root, "auth_token")
        self.extra_env = dict(system_config_env or {})
        self._lock = threading.Lock()

    # -- the environment every process of this cluster runs with -----------------------------------
    def env(self) -> dict[str, str]:
        """os.environ plus the cluster's token auth: for `ray start`, and for any driver that joins."""
        env = dict(os.environ)
        env.update(self.extra_env)
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = self.token_path
        env.pop("RAY_AUTH_TOKEN", None)        # the file is the one source
        env.pop("RAY_ADDRESS", None)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Workers import the server's code from the checkout this module is in (a worktree's code,
        # not whatever `pip install -e` points at).
        env["PYTHONPATH"] = os.pathsep.join([SOURCE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        return env

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the cluster is not started")
        return f"{self.ip}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, nodes: int = 1) -> RayNodes:
        if nodes < 1:
            raise ValueError("a cluster needs at least its head node")
        try:
            Path(self.token_path).write_text(secrets.token_hex(32))
            os.chmod(self.token_path, 0o600)
            self.port = free_port()
            self._start_node(head=True)
            for _ in range(nodes - 1):
                self.add_node()
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self) -> Node:
        """Start another worker node; returns once its raylet runs and `ray start` reported it started."""
        if self.port is None:
            raise RuntimeError("start() the head first")
        return self._start_node(head=False)

    def _start_node(self, *, head: bool) -> Node:
        with self._lock:
            index = len(self.nodes)
        tdir = os.path.join(self.root, f"n{index}")
        os.makedirs(tdir, exist_ok=True)
        args = [ray_bin(), "start", "--block", "--disable-usage-stats", f"--num-cpus={self.cpus_per_node}",
                f"--node-ip-address={self.ip}", f"--temp-dir={tdir}",
                # nodes share this machine: every fixed default port would collide
                f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"]
        if head:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        log_path = os.path.join(self.root, f"node{index}.log")
        logf = open(log_path, "wb")
        try:
            # its own process group: a terminal's ^C must not reach it before stop() does
            proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=self.env(),
                                    start_new_session=True)
        finally:
            logf.close()
        node = Node(index, head, proc, tdir, log_path)
        with self._lock:
            self.nodes.append(node)
        self._wait_started(node)
        return node

    def _wait_started(self, node: Node) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray node {node.index} exited ({node.proc.returncode}): {self._tail(node)}")
            self._scan(node)
            if node.raylet_pid and node.node_id and "Ray runtime started" in self._tail(node, 20_000):
                log.info("ray node %d up (node id %s, raylet pid %d)", node.index, node.node_id[:12], node.raylet_pid)
                return
            time.sleep(0.2)       # polling a child process's state: there is no event to wait on
        raise TimeoutError(f"ray node {node.index} did not start in {NODE_START_TIMEOUT_S:.0f} s: {self._tail(node)}")

    def _scan(self, node: Node) -> None:
        """Record the node's processes (descendants of its `ray start`), its raylet and node id."""
        try:
            kids = psutil.Process(node.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for p in kids:
            node.procs.setdefault(p.pid, p)
            if node.raylet_pid is None:
                try:
                    cmd = p.cmdline()
                except psutil.Error:
                    continue
                if cmd and os.path.basename(cmd[0]) == "raylet":
                    node.raylet_pid = p.pid
                    for a in cmd:
                        m = re.match(r"--node_id=([0-9a-f]+)", a)
                        if m:
                            node.node_id = m.group(1)

    @staticmethod
    def _tail(node: Node, n: int = 2000) -> str:
        try:
            with open(node.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def driver(self, code: str, timeout: float = 60.0) -> str:
        """Run `code` in a fresh Python process connected to this cluster (`ray` imported and
        initialised in namespace "syncopate"); returns its stdout. For inspection from a process
        that is already the driver of another Ray (a test session's local one)."""
        prelude = (f"import ray\nray.init(address={self.address!r}, namespace='syncopate', "
                   "log_to_driver=False, configure_logging=False)\n")
        out = subprocess.run([sys.executable, "-c", prelude + code], env=self.env(), capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"cluster driver snippet failed ({out.returncode}): {out.stderr[-2000:]}")
        return out.stdout

    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.head and n.alive]

    def kill_node(self, node: Node, timeout: float = 30.0) -> float:
        """kill -9 of the node's raylet (what losing the machine looks like to Ray). Returns the
        monotonic time of the kill. Waits until the node's `ray start` has exited."""
        if node.head:
            raise ValueError("killing the head takes the GCS and the whole cluster down: kill a worker node")
        if node.raylet_pid is None:
            raise RuntimeError(f"node {node.index} has no raylet")
        self._scan(node)
        t = time.monotonic()
        try:
            os.kill(node.raylet_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.killed = True
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("node %d's ray start did not exit after its raylet was killed", node.index)
        return t

    def stop(self) -> None:
        """Stop every node this object started (workers first, then the head), by pid."""
        for node in sorted(self.nodes, key=lambda n: n.head):
            self._scan(node)
            if node.proc.poll() is None:
                try:
                    node.proc.send_signal(signal.SIGTERM)    # ray start --block stops its processes
                except ProcessLookupError:
                    pass
        for node in self.nodes:
            try:
                node.proc.wait(20)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
        for node in self.nodes:      # whatever outlived its `ray start` (workers, agents)
            for p in node.procs.values():
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:     # is_running: not a reused pid
                        p.kill()
                except psutil.Error:
                    pass
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayNodes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
