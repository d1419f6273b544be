"""Runs a scenario against a target and writes its report.

    target = Target.from_server(ray_server)            # or Target(url, secret) for --url
    report = await run_scenario("collab", target, {"playlists": 5, "editors": 4}, seconds=10, out_dir="out")

A run: setup (create users, playlists; connect every client) -> the load phase (t = 0 of every
timeline; faults fire at their times) -> wait for the faults to finish -> settle (every in-flight
request answered) -> verify (read everything back through the API: convergence, acknowledged
changes present) -> report.

`OwnServer` is what `syncopate simulate` starts when no --url is given: a RayServer on a temp data
dir and a fixed free port (so a restarted gateway listens where its clients reconnect), with the
stores the faults need (its own redis-server; PostgreSQL through a TCP proxy it can cut) under a
unique table prefix that it drops afterwards.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulations.faults import (
    POSTGRES_DSN,
    FaultInjector,
    FaultSpec,
    OwnRedis,
    TcpProxy,
    dsn_host_port,
    free_port,
    proxied_dsn,
)
from simulations.progress import Progress
from simulations.report import Recorder, build_report, recovery, write_report
from simulations.resources import (
    ResourceSampler,
    dir_bytes,
    listening_pids,
    postgres_pids,
    ray_server_pids,
)

log = logging.getLogger("syncopate.sim")


@dataclass
class Target:
    """Where the load goes, and how to mint its users' tokens."""
    url_fn: Callable[[], str]
    secret: str
    server: Any = None                    # a RayServer (faults, resource sampling) or None
    store: str = "unknown"
    catalog: Any = None
    resolve_pids: Callable[[], dict[str, int]] | None = None
    extra_pids: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    store_bytes: Callable[[], int] | None = None   # the store's size on disk (the data), when known
    own: OwnServer | None = None

    def __post_init__(self) -> None:
        from gateway.auth import Auth
        self.auth = Auth(self.secret)
        if self.catalog is None:
            from catalog import Catalog
            self.catalog = Catalog.generated()

    @property
    def url(self) -> str:
        return self.url_fn()

    def token(self, user: str, *, device_id: str | None = None, product: str = "premium",
              ttl_s: int = 6 * 3600) -> str:
        return self.auth.mint(user, product=product, ttl_s=ttl_s, device_id=device_id)

    @classmethod
    def from_server(cls, server, *, store: str | None = None, catalog=None) -> Target:
        spec = server.spec
        if store is None:
            store = ("tiered" if spec.redis_url else "postgres") if spec.postgres_dsn else "sqlite"
        return cls(url_fn=lambda: server.url, secret=server.secret, server=server, store=store, catalog=catalog,
                   resolve_pids=lambda: ray_server_pids(server))

    @classmethod
    def from_url(cls, url: str, secret: str, *, catalog=None, store: str = "unknown") -> Target:
        from urllib.parse import urlsplit
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        local = u.hostname in ("127.0.0.1", "localhost", "::1")
        return cls(url_fn=lambda: url.rstrip("/"), secret=secret, store=store, catalog=catalog,
                   resolve_pids=(lambda: listening_pids(port)) if local else None)

    def describe(self) -> dict:
        out = {"url": self.url, "store": self.store}
        if self.server is not None:
            out.update(hosts=self.server.spec.hosts, gateways=self.server.spec.gateways, cluster=self.server.cluster)
            if self.own is not None and self.own.nodes:
                out["nodes"] = self.own.nodes
        return out


class OwnServer:
    """A RayServer the harness starts and stops (blocking calls: use from sync code or a thread)."""

    def __init__(self, *, store: str = "sqlite", faults: FaultSpec | None = None, hosts: int = 2,
                 gateways: int = 1, postgres_dsn: str = POSTGRES_DSN, kinds: str | None = None,
                 data_dir: str | None = None, gateway_config: dict | None = None, log_level: str = "WARNING",
                 idle_timeout_s: float = 600.0, catalog: str | None = None, nodes: int = 0) -> None:
        faults = faults or FaultSpec()
        self.catalog = catalog
        if store is None:       # the default: SQLite on one machine, PostgreSQL on a cluster
            store = "postgres" if nodes else "sqlite"
        if nodes and store == "sqlite":
            raise ValueError("--nodes: SQLite is refused on a cluster (each node's own file); use --store postgres|tiered")
        self.nodes = nodes
        self.cluster_nodes = None       # a simulations.cluster.RayNodes with nodes >= 1
        if faults.needs_redis:
            store = "tiered"
        elif faults.needs_postgres and store == "sqlite":
            store = "postgres"
        self.store = store
        self.faults = faults
        self.hosts = hosts
        self.gateways = gateways
        self.postgres_dsn = postgres_dsn
        self.kinds = kinds
        self.gateway_config = gateway_config or {}
        self.log_level = log_level
        self.idle_timeout_s = idle_timeout_s
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="sim-server-")
        self.data_dir = data_dir or self._tmp
        self.prefix = f"sim_{uuid.uuid4().hex[:10]}_"
        self.redis: OwnRedis | None = None
        self.proxy: TcpProxy | None = None
        self.server = None

    def start(self) -> OwnServer:
        try:
            return self._start()
        except BaseException:
            self.stop()          # never leave a redis-server, a proxy or tables behind
            raise

    def _start(self) -> OwnServer:
        from syncopate.server import RayServer, ServerSpec
        redis_url = pg = None
        if self.store in ("postgres", "tiered"):
            pg = self.postgres_dsn
            if self.faults.cut_postgres is not None:
                self.proxy = TcpProxy(*dsn_host_port(pg))
                pg = proxied_dsn(pg, self.proxy.start())
        if self.store == "tiered":
            self.redis = OwnRedis()
            self.redis.start()
            redis_url = self.redis.url
        spec = ServerSpec(data_dir=self.data_dir, port=free_port(), hosts=self.hosts, gateways=self.gateways,
                          redis_url=redis_url, postgres_dsn=pg, prefix=self.prefix, log_level=self.log_level,
                          gateway=dict(self.gateway_config), idle_timeout_s=self.idle_timeout_s,
                          catalog=self.catalog)
        if self.kinds:
            spec.kinds = self.kinds
        if self.nodes:
            self._start_nodes(spec)
        self.server = RayServer(spec).start()
        return self

    def _start_nodes(self, spec) -> None:
        """A local multi-node cluster, this process its driver: one gateway per node, all on the
        spec's port (SO_REUSEPORT), so a client whose node died reconnects to a live node's gateway
        at the same address, as behind a load balancer."""
        import os

        from simulations.cluster import RayNodes
        self.cluster_nodes = RayNodes(cpus_per_node=1).start(self.nodes)
        env = self.cluster_nodes.env()
        for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):     # this process joins as a driver
            os.environ[k] = env[k]
        os.environ.pop("RAY_AUTH_TOKEN", None)
        spec.ray_address = self.cluster_nodes.address
        spec.gateways = "per-node"
        spec.host = "127.0.0.1"         # every node is this machine

    def target(self) -> Target:
        t = Target.from_server(self.server, store=self.store)
        if self.redis is not None:
            t.extra_pids["redis (own)"] = lambda: [p for p in [self.redis.pid] if p]
        if self.store in ("postgres", "tiered"):
            t.extra_pids["postgres (all backends)"] = postgres_pids
        else:
            t.store_bytes = lambda: dir_bytes(self.data_dir)
        if self.cluster_nodes is not None:      # what a node costs besides the server's actors
            for node in self.cluster_nodes.nodes:
                label = f"ray node {node.index} ({'head: gcs, ' if node.head else ''}raylet, agents)"
                t.extra_pids[label] = lambda node=node: self.cluster_nodes.ray_pids(node)
        t.own = self
        return t

    def injector(self, spec: FaultSpec) -> FaultInjector:
        return FaultInjector(spec, server=self.server, proxy=self.proxy, redis=self.redis, nodes=self.cluster_nodes)

    def stop(self, *, drop: bool = True) -> None:
        if self.server is not None:
            try:
                self.server.stop()
            except Exception as exc:  # noqa: BLE001 - best-effort cleanup
                log.warning("server stop: %s", exc)
        if self.cluster_nodes is not None:
            import ray
            ray.shutdown()
            self.cluster_nodes.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.redis is not None:
            self.redis.cleanup()
        if drop and self.store in ("postgres", "tiered"):
            try:
                asyncio.run(_drop_pg(self.postgres_dsn, self.prefix))
            except RuntimeError:      # called inside a running loop: use a thread
                import threading
                th = threading.Thread(target=lambda: asyncio.run(_drop_pg(self.postgres_dsn, self.prefix)))
                th.start()
                th.join(30)
            except Exception as exc:  # noqa: BLE001 - best-effort cleanup
                log.warning("dropping %s tables: %s", self.prefix, exc)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


async def _drop_pg(dsn: str, prefix: str) -> None:
    from storage.postgres import PostgresStore
    st = PostgresStore(dsn, prefix=prefix)
    await st.start()
    try:
        await st.drop()
    finally:
        await st.close()


def scenario_class(name):
    from simulations import scenarios
    if not isinstance(name, str):
        return name
    key = name.replace("_", "-")
    if key not in scenarios.NAMES:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(scenarios.NAMES)}")
    return scenarios.get(key)


async def run_scenario(name: str, target: Target, params: dict | None = None, *, seconds: float = 10.0,
                       out_dir: str | None = None, faults: FaultSpec | None = None,
                       injector: FaultInjector | None = None, quiet: bool = False, plots: bool = True,
                       sample_resources: bool = True) -> dict:
    cls = scenario_class(name)
    params = cls.resolve_params(params or {})
    faults = faults or FaultSpec()
    if faults.any():
        if injector is None:
            if target.own is None:
                raise ValueError("fault options need a server the harness starts (drop --url)")
            injector = target.own.injector(faults)
        injector.check()
        # the load must outlast the last fault by enough to see the recovery (a Ray host restart
        # takes about 3 s on the 2-core machine)
        seconds = max(seconds, faults.last_event_s() + faults.recovery_window_s())
    rec = Recorder()
    prog = Progress(seconds, cls.name, quiet=quiet)
    scen = cls(target, rec, params, seconds=seconds)
    t_setup = time.perf_counter()
    prog.note(f"setting up ({scen.describe_size()}) against {target.url}")
    sampler = None
    try:
        await scen.setup()
        setup_s = time.perf_counter() - t_setup
        prog.note(f"set up in {setup_s:.1f} s; load for {seconds:g} s")
        rec.restart_clock()
        if sample_resources:
            sampler = ResourceSampler(target.resolve_pids, groups=target.extra_pids, store_bytes=target.store_bytes)
            sampler.start(rec.t0)
        if injector is not None:
            injector.start(rec)
        quiet_gc = cls.quiet_collector and gc.isenabled()
        if quiet_gc:
            # This process's collections are inside every latency it measures (measured in
            # bench_library_push's load processes, which do the same: 73-117 young and 1-2 full
            # collections in a 60 s run, up to 76 ms of CPU each). What cyclic garbage the run makes
            # waits for its end.
            gc.collect()
            gc.freeze()
            gc.disable()
        try:
            load = asyncio.get_running_loop().create_task(scen.run(seconds))
            while not load.done():
                await asyncio.wait({load}, timeout=0.25)
                prog.update(min(rec.now(), seconds), scen.progress_info())
            load.result()
        finally:
            if quiet_gc:
                gc.enable()
        if injector is not None:
            await injector.wait()
        load_s = rec.now()
        resources = await sampler.stop() if sampler else {}     # the load phase's resource use
        sampler = None
        if resources.get("cpu_window_s"):      # the operations the processes' cpu_s was spent on
            lo, hi = resources["cpu_window_s"]
            resources["ops_in_cpu_window"] = {n: sum(1 for t, _ in s if lo <= t <= hi) for n, s in rec.lat.items()}
        prog.close(scen.progress_info())
        prog.note("settling and verifying")
        await scen.settle()
        try:
            convergence = await scen.verify()
        except Exception as exc:     # a verification that can't read back is a failed run, with a report
            log.exception("verification failed")
            convergence = {"ok": False, "error": f"verification failed: {type(exc).__name__}: {exc}"}
        fault_rows = _fault_rows(rec, scen, injector)
        report = build_report(rec, scenario=cls.name, params={**params, "seconds": seconds, **faults.describe()},
                              target=target.describe(), convergence=convergence, faults=fault_rows,
                              resources=resources, load_seconds=load_s,
                              extra={"setup_s": round(setup_s, 3), "clients": scen.client_stats(),
                                     **scen.extra_report()})
    finally:
        if sampler is not None:
            await sampler.stop()
        await scen.teardown()
    if out_dir:       # matplotlib and file writes: off the event loop
        await asyncio.get_running_loop().run_in_executor(None, lambda: write_report(report, out_dir, plots=plots))
        prog.note(f"report: {out_dir}/report.md ({'OK' if report['ok'] else 'FAILED'})")
    return report


def _fault_rows(rec: Recorder, scen, injector: FaultInjector | None) -> list[dict]:
    if injector is None:
        return []
    rows = []
    for f in injector.results:
        row = dict(f)
        at = f.get("at_s")
        if at is not None and "error" not in f:
            row["recovery"] = recovery(rec, at, f.get("restored_t"))
            row["acked_before"] = scen.ledger.acked_before(at)
            row["acked_missing_after_recovery"] = scen.ledger.missing_before(at)
        rows.append(row)
    return rows
