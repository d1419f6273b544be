"""Faults injected mid-run: kill a host, kill a gateway, restart Redis, cut PostgreSQL off.

    --kill-host-at S          ray.kill the host actor 0 (Ray restarts it; entities re-activate from
                              the store on their next message; the gateways fail the requests the
                              dead host held with HOST_UNAVAILABLE and clients retry with the same op id)
    --kill-gateway-at S       ray.kill gateway 0; the harness plays the supervisor (`syncopate serve`
                              calls ensure_started every second) until the gateway listens again;
                              every client of it reconnects and resubscribes
    --restart-redis-at S      stop the harness's own redis-server (the tiered store's warm cache)
                              and start it again on the same port, empty
    --cut-postgres S:D        from S for D seconds, every connection to PostgreSQL is cut and new ones
                              refused: the store connects through a TCP proxy the harness controls
                              (cleaner than pg_terminate_backend, and it cuts nothing else)

Faults need a server the harness started (no --url): it must hold the Ray handles, and for Redis or
PostgreSQL faults the server must run with those stores, through the harness's redis-server and
proxy. The scenario's ledger of acknowledged changes then tells how many changes acknowledged
before each fault are missing after recovery (the requirement is zero), and report.recovery()
how long the service took to recover.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("syncopate.sim.faults")

POSTGRES_DSN = os.environ.get("SYNCOPATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class FaultSpec:
    kill_host_at: float | None = None
    kill_host_index: int = 0
    kill_gateway_at: float | None = None
    kill_gateway_index: int = 0
    restart_redis_at: float | None = None
    cut_postgres: tuple[float, float] | None = None     # (at, duration)
    kill_node_at: float | None = None                   # kill -9 a worker node's raylet (--nodes N)

    @classmethod
    def from_args(cls, args) -> FaultSpec:
        cut = getattr(args, "cut_postgres", None)
        if isinstance(cut, str):
            cut = parse_cut(cut)
        return cls(kill_host_at=getattr(args, "kill_host_at", None),
                   kill_gateway_at=getattr(args, "kill_gateway_at", None),
                   restart_redis_at=getattr(args, "restart_redis_at", None), cut_postgres=cut,
                   kill_node_at=getattr(args, "kill_node_at", None))

    def any(self) -> bool:
        return any(x is not None for x in (self.kill_host_at, self.kill_gateway_at, self.restart_redis_at,
                                           self.cut_postgres, self.kill_node_at))

    @property
    def needs_redis(self) -> bool:
        return self.restart_redis_at is not None

    @property
    def needs_postgres(self) -> bool:
        return self.cut_postgres is not None or self.restart_redis_at is not None

    def last_event_s(self) -> float:
        ts = [t for t in (self.kill_host_at, self.kill_gateway_at, self.restart_redis_at, self.kill_node_at)
              if t is not None]
        if self.cut_postgres:
            ts.append(self.cut_postgres[0] + self.cut_postgres[1])
        return max(ts) if ts else 0.0

    def describe(self) -> dict:
        out = {}
        if self.kill_host_at is not None:
            out["kill_host_at"] = self.kill_host_at
        if self.kill_gateway_at is not None:
            out["kill_gateway_at"] = self.kill_gateway_at
        if self.restart_redis_at is not None:
            out["restart_redis_at"] = self.restart_redis_at
        if self.cut_postgres is not None:
            out["cut_postgres"] = f"{self.cut_postgres[0]:g}:{self.cut_postgres[1]:g}"
        if self.kill_node_at is not None:
            out["kill_node_at"] = self.kill_node_at
        return out

    def recovery_window_s(self) -> float:
        """How long the load must outlast the last fault to see the recovery: a Ray host restart
        takes ~3 s on the 2-core machine; a node loss ~15 s before Ray marks the node dead, then
        the restart."""
        return 35.0 if self.kill_node_at is not None else 8.0


def parse_cut(text: str) -> tuple[float, float]:
    at, sep, dur = text.partition(":")
    if not sep:
        raise ValueError("--cut-postgres takes SECONDS:DURATION, e.g. 5:3")
    a, d = float(at), float(dur)
    if a < 0 or d <= 0:
        raise ValueError("--cut-postgres: SECONDS >= 0 and DURATION > 0")
    return a, d


# -- a TCP proxy the harness can cut ------------------------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:<port> to (host, port) in its own thread and event loop (so the load the
    harness generates never delays the store's traffic). `cut()` aborts every open connection and
    refuses new ones until `restore()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port: int | None = None
        self.cut_active = False
        self.cuts = 0
        self.connections_cut = 0
        self.accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._pairs: set = set()
        self._ready = threading.Event()

    def start(self) -> int:
        self._thread = threading.Thread(target=self._run, name="pg-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self.port

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(main())
        loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_active:
            writer.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, uw)
        self._pairs.add(pair)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                try:
                    w.close()
                except OSError as exc:
                    log.debug("proxy close: %s", exc)

        try:
            await asyncio.gather(pipe(reader, uw), pipe(ur, writer))
        finally:
            self._pairs.discard(pair)

    def _cut(self) -> None:
        self.cut_active = True
        self.cuts += 1
        for a, b in list(self._pairs):
            self.connections_cut += 1
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._cut)

    def restore(self) -> None:
        def go():
            self.cut_active = False
        self._loop.call_soon_threadsafe(go)

    def stop(self) -> None:
        if self._loop is None:
            return

        def go():
            self._cut()
            if self._server is not None:
                self._server.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(go)
        if self._thread is not None:
            self._thread.join(5)


def proxied_dsn(dsn: str, port: int) -> str:
    """The same DSN with host:port replaced by the proxy's."""
    from urllib.parse import urlsplit, urlunsplit
    u = urlsplit(dsn)
    user = u.username or "postgres"
    auth = user + (f":{u.password}" if u.password else "") + "@"
    return urlunsplit((u.scheme, f"{auth}127.0.0.1:{port}", u.path, u.query, u.fragment))


def dsn_host_port(dsn: str) -> tuple[str, int]:
    from urllib.parse import urlsplit
    u = urlsplit(dsn)
    return u.hostname or "127.0.0.1", u.port or 5432


# -- a redis-server of the harness's own ----------------------------------------------------------------
class OwnRedis:
    """A redis-server on a free port, without persistence (as the warm tier runs), that the harness
    may stop and start again without disturbing anyone else's Redis."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.dir = tempfile.mkdtemp(prefix="sim-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> float:
        """Stop, start again on the same port; returns the downtime in seconds."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the injector -----------------------------------------------------------------------------------------
@dataclass
class FaultInjector:
    spec: FaultSpec
    server: object = None                 # a RayServer
    proxy: TcpProxy | None = None
    redis: OwnRedis | None = None
    nodes: object = None                  # a simulations.cluster.RayNodes (--nodes N)
    results: list[dict] = field(default_factory=list)
    _tasks: list = field(default_factory=list)

    def check(self) -> None:
        if not self.spec.any():
            return
        if (self.spec.kill_host_at is not None or self.spec.kill_gateway_at is not None) and self.server is None:
            raise ValueError("--kill-host-at / --kill-gateway-at need a server the harness starts (drop --url)")
        if self.spec.restart_redis_at is not None and self.redis is None:
            raise ValueError("--restart-redis-at needs the harness's own redis-server (drop --url)")
        if self.spec.cut_postgres is not None and self.proxy is None:
            raise ValueError("--cut-postgres needs the harness's PostgreSQL proxy (drop --url)")
        if self.spec.kill_node_at is not None and (self.nodes is None or not self.nodes.workers()):
            raise ValueError("--kill-node-at needs a multi-node cluster the harness starts (--nodes 2 or more)")

    def start(self, rec) -> None:
        """Schedule every fault relative to now (the recorder's t = 0 is the load start)."""
        loop = asyncio.get_running_loop()
        s = self.spec
        if s.kill_host_at is not None:
            self._tasks.append(loop.create_task(self._at(rec, s.kill_host_at, self._kill_host)))
        if s.kill_gateway_at is not None:
            self._tasks.append(loop.create_task(self._at(rec, s.kill_gateway_at, self._kill_gateway)))
        if s.restart_redis_at is not None:
            self._tasks.append(loop.create_task(self._at(rec, s.restart_redis_at, self._restart_redis)))
        if s.cut_postgres is not None:
            self._tasks.append(loop.create_task(self._at(rec, s.cut_postgres[0], self._cut_postgres)))
        if s.kill_node_at is not None:
            self._tasks.append(loop.create_task(self._at(rec, s.kill_node_at, self._kill_node)))

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _at(self, rec, at: float, fn) -> None:
        delay = at - rec.now()
        if delay > 0:
            await asyncio.sleep(delay)          # the schedule itself: faults happen at given times
        try:
            await fn(rec)
        except Exception as exc:
            log.exception("fault failed")
            self.results.append({"kind": fn.__name__.strip("_"), "at_s": round(rec.now(), 3),
                                 "error": f"{type(exc).__name__}: {exc}"})

    async def _kill_host(self, rec) -> None:
        i = self.spec.kill_host_index
        t = rec.now()
        rec.mark("fault", fault="kill_host", host=i)
        await asyncio.get_running_loop().run_in_executor(None, self.server.kill_host, i)
        self.results.append({"kind": "kill_host", "host": i, "at_s": round(t, 3), "duration_s": None,
                             "restored_t": None})

    async def _kill_gateway(self, rec) -> None:
        i = self.spec.kill_gateway_index
        t = rec.now()
        rec.mark("fault", fault="kill_gateway", gateway=i)
        loop = asyncio.get_running_loop()
        old_port = self.server.ports[i] if i < len(self.server.ports) else None
        await loop.run_in_executor(None, self.server.kill_gateway, i)
        # ray.kill returns before the process is gone: wait until the old gateway stops listening
        deadline = time.monotonic() + 20
        while old_port and time.monotonic() < deadline and await _listens(self.server.spec.host, old_port):
            await asyncio.sleep(0.05)           # poll: the kill is asynchronous
        # Play the supervisor: Ray restarts the actor, ensure_started makes it listen again.
        deadline = time.monotonic() + 90
        listening = None
        while time.monotonic() < deadline:
            await loop.run_in_executor(None, self.server.supervise_once, 10.0)
            port = self.server.ports[i] if i < len(self.server.ports) else None
            if port and await _listens(self.server.spec.host, port):
                listening = rec.now()
                break
            await asyncio.sleep(0.2)            # poll interval of the supervisor loop
        rec.mark("fault_end", fault="kill_gateway", listening=listening is not None)
        self.results.append({"kind": "kill_gateway", "gateway": i, "at_s": round(t, 3),
                             "duration_s": round(listening - t, 3) if listening else None,
                             "restored_t": listening, "port": self.server.ports[i] if self.server.ports else None})

    async def _restart_redis(self, rec) -> None:
        t = rec.now()
        rec.mark("fault", fault="restart_redis")
        down = await asyncio.get_running_loop().run_in_executor(None, self.redis.restart)
        rec.mark("fault_end", fault="restart_redis")
        self.results.append({"kind": "restart_redis", "at_s": round(t, 3), "duration_s": round(down, 3),
                             "restored_t": rec.now()})

    async def _cut_postgres(self, rec) -> None:
        _at, dur = self.spec.cut_postgres
        t = rec.now()
        rec.mark("fault", fault="cut_postgres", duration_s=dur)
        self.proxy.cut()
        await asyncio.sleep(dur)                # the cut lasts this long by definition
        self.proxy.restore()
        rec.mark("fault_end", fault="cut_postgres")
        self.results.append({"kind": "cut_postgres", "at_s": round(t, 3), "duration_s": dur,
                             "restored_t": rec.now(), "connections_cut": self.proxy.connections_cut})


    async def _kill_node(self, rec) -> None:
        """kill -9 the raylet of the worker node that runs the most of the server's hosts."""
        loop = asyncio.get_running_loop()
        victim, actors = await loop.run_in_executor(None, self._pick_node)
        t = rec.now()
        rec.mark("fault", fault="kill_node", node=victim.node_id[:12], actors=actors)
        await loop.run_in_executor(None, self.nodes.kill_node, victim)
        self.results.append({"kind": "kill_node", "node": victim.node_id[:12], "actors": actors,
                             "at_s": round(t, 3), "duration_s": None, "restored_t": None})

    def _pick_node(self) -> tuple:
        from ray._private.state import state
        prefix = f"{self.server.cluster}-"
        on: dict[str, list[str]] = {}
        for info in state.actor_table(None).values():
            name = info.get("Name") or ""
            if name.startswith(prefix) and info.get("State") == "ALIVE":
                on.setdefault(info["Address"]["NodeID"], []).append(name[len(prefix):])
        workers = self.nodes.workers()

        def hosts(n) -> int:
            return sum(1 for a in on.get(n.node_id, ()) if a.startswith("host-"))
        victim = max(workers, key=hosts)       # the first of the most loaded: deterministic
        return victim, sorted(on.get(victim.node_id, ()))


async def _listens(host: str, port: int) -> bool:
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    w.close()
    return True
