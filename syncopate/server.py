"""Composition root: start hosts and gateways on Ray (RayServer), or all in one process (LocalServer).

`syncopate serve` runs a RayServer: with no --ray-address it starts a local Ray (the embedded
engine); with one it joins that cluster and spreads the hosts over its nodes. The driver process
supervises: it re-starts the listener of a gateway Ray restarted, and stops everything cleanly.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from syncopate.process_env import actor_options, arena_max_default

log = logging.getLogger("syncopate.server")


@dataclass
class ServerSpec:
    data_dir: str = "./var"
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    postgres_dsn: str | None = None
    ray_address: str | None = None
    hosts: int = 2
    gateways: int | str = 1         # a count, or "per-node": one pinned to each node (syncopate/cluster_placement.py)
    shared_data_dir: bool = False   # SQLite on a cluster: the operator asserts every node shares data_dir
    catalog: str | None = None
    secret_file: str | None = None          # token signing key; default <data-dir>/secret.key
    channel_secret_file: str | None = None  # host channel key; default <data-dir>/channel.key
    stream_secret_file: str | None = None   # stream URL key (docs/rights.md); default <data-dir>/stream.key
    channel_bind: str | None = None         # host channel address; default 127.0.0.1, "node" on a cluster
    idle_timeout_s: float = 600.0
    prefix: str = "syncopate_"
    log_level: str = "INFO"
    gateway: dict = field(default_factory=dict)     # GatewayConfig overrides
    limits: dict = field(default_factory=dict)
    kinds: str = "actors.kinds:default_kinds"       # "module:function" returning {kind: Entity class}
    # glibc malloc arenas of each gateway/host/events process (syncopate/process_env.py); 0: glibc's default
    malloc_arena_max: int = field(default_factory=arena_max_default)

    def __post_init__(self) -> None:
        # the gateway's vouch must keep live devices online (gateway/device_liveness.py): checked here,
        # where the gateway's settings and the device group's timings meet
        from gateway.context import GatewayConfig
        from gateway.device_liveness import check_timing
        check_timing(float(self.gateway.get("session_heartbeat_s", GatewayConfig.session_heartbeat_s)), self.limits)

    def actor_spec(self, secret_file: str | None = None, channel_secret_file: str | None = None,
                   stream_secret_file: str | None = None) -> dict:
        # Paths, never the secrets: actor arguments live in Ray's GCS and its tools show them.
        # On a multi-node cluster the files must exist on every node at these paths (a shared
        # mount, or copied there with mode 0600); an actor that can't read them fails to start.
        return {"data_dir": str(Path(self.data_dir).resolve()), "redis_url": self.redis_url,
                "postgres_dsn": self.postgres_dsn, "catalog": self.catalog, "idle_timeout_s": self.idle_timeout_s,
                "prefix": self.prefix, "log_level": self.log_level, "secret_file": secret_file,
                "channel_secret_file": channel_secret_file, "stream_secret_file": stream_secret_file,
                "channel_bind": self.channel_bind or ("node" if self.ray_address else "127.0.0.1"),
                "gateway": self.gateway, "limits": self.limits, "kinds": self.kinds}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray
    if ray.is_initialized():
        return
    kwargs = dict(namespace="syncopate", include_dashboard=False, log_to_driver=True,
                  configure_logging=True, logging_level=logging.WARNING)
    if address:
        join_cluster(address, kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)


class ClusterJoinError(ConnectionError):
    """`serve --ray-address` could not join the cluster (a message for the operator)."""


def join_cluster(address: str, kwargs: dict) -> None:
    import ray
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        mode = os.environ.get("RAY_AUTH_MODE")
        hint = ("" if mode == "token" else
                " Ray 2.60 turns token authentication on at the head: set RAY_AUTH_MODE=token for `serve`, "
                "with the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN.")
        raise ClusterJoinError(f"could not join the Ray cluster at {address} ({exc}). Is it running and "
                               f"reachable from here?{hint} See docs/operations.md.") from exc


class RayServer:
    def __init__(self, spec: ServerSpec, cluster: str | None = None, announce=None) -> None:
        self.spec = spec
        self.cluster = cluster or f"s{uuid.uuid4().hex[:8]}"
        self.hosts: dict = {}                   # slot -> host actor handle (a removed slot is gone, never reused)
        self._next_slot = 0
        self.gateways: list = []
        self.events = None                      # the events consumer actor (syncopate/events/service.py)
        self.ports: list[int] = []
        self.node_gateways = None       # NodeGateways with gateways="per-node"
        self.host_placement = None
        self.announce = announce or log.info    # where a gateway listens (serve prints it)
        self.secret: str | None = None
        self.secret_file: str | None = None     # where it is: for tools given a file, not the secret

    def start(self, timeout: float = 120.0) -> "RayServer":
        import ray
        from actors.channel_auth import ChannelAuth
        from actors.ray_host import HostActor, check_channel_bind, gateway_name, host_name
        from gateway.auth import CHANNEL_SECRET_FILE, Auth, read_secret, secret_path
        from gateway.ray_gateway import GatewayActor
        from gateway.stream_sign import STREAM_SECRET_FILE

        from syncopate.cluster_store import check_store_fits, write_marker

        spec = self.spec
        check_store_fits(spec.ray_address, spec.postgres_dsn, spec.shared_data_dir)
        Path(spec.data_dir).mkdir(parents=True, exist_ok=True)
        secret_file = secret_path(spec.data_dir, spec.secret_file)
        channel_file = secret_path(spec.data_dir, spec.channel_secret_file, CHANNEL_SECRET_FILE)
        stream_file = secret_path(spec.data_dir, spec.stream_secret_file, STREAM_SECRET_FILE)
        if read_secret(stream_file) == read_secret(secret_file):
            raise ValueError("the stream URL key must not be the token signing key")
        # Checked here, so a bad key or address stops `serve` instead of every actor's start.
        self.secret = read_secret(secret_file)      # the driver's copy: tools mint tokens with it
        self.secret_file = str(secret_file)
        Auth(self.secret)
        channel_secret = read_secret(channel_file)
        ChannelAuth(channel_secret)
        if channel_secret == self.secret:
            raise ValueError("the channel secret must not be the token signing key")
        if spec.channel_bind and spec.channel_bind != "node":
            check_channel_bind(spec.channel_bind)
        init_ray(spec.ray_address)
        aspec = self.aspec = spec.actor_spec(str(secret_file), str(channel_file), str(stream_file))
        if spec.ray_address and not spec.postgres_dsn:      # SQLite on a cluster: every host checks the dir
            aspec["shared_dir_token"] = write_marker(spec.data_dir, self.cluster)
        strategies = self._host_strategies(timeout)
        self.hosts = {i: HostActor.options(name=host_name(self.cluster, i), max_restarts=-1, max_task_retries=0,
                                           num_cpus=0, scheduling_strategy=strategies[i], max_concurrency=10_000,
                                           **self._env())
                      .remote(self.cluster, i, spec.hosts, aspec) for i in range(spec.hosts)}
        self._next_slot = spec.hosts
        ray.get([h.ready.remote() for h in self.hosts.values()], timeout=timeout)
        from syncopate.events.service import EventsActor
        self.events = EventsActor.options(name=f"{self.cluster}-events", max_restarts=-1, max_task_retries=0,
                                          num_cpus=0, **self._env()).remote(aspec)
        ray.get(self.events.ready.remote(), timeout=timeout)
        if spec.gateways == "per-node":
            self._start_node_gateways(aspec, timeout)
            return self
        listen = {"host": spec.host, "port": spec.port, "reuse_port": spec.gateways > 1}
        for g in range(spec.gateways):
            gid = f"g{g}"
            lst = dict(listen)
            if spec.port == 0 and spec.gateways > 1:
                lst["reuse_port"] = False       # port 0: each gateway gets its own port
            self.gateways.append(GatewayActor.options(name=gateway_name(self.cluster, gid), max_restarts=-1,
                                                      max_task_retries=0, num_cpus=0, max_concurrency=10_000,
                                                      **self._env())
                                 .remote(self.cluster, gid, spec.hosts, aspec, lst))
        self.ports = ray.get([g.ensure_started.remote() for g in self.gateways], timeout=timeout)
        return self

    def _env(self) -> dict:
        """Ray options every server actor is created with: its memory settings (syncopate/process_env.py)."""
        return actor_options(self.spec.malloc_arena_max)

    # -- placement on a cluster (syncopate/cluster_placement.py) -----------------------------------
    def _host_strategies(self, timeout: float) -> list:
        if not self.spec.ray_address:
            return ["DEFAULT"] * self.spec.hosts
        from syncopate.cluster_placement import place_hosts
        self.host_placement = place_hosts(self.cluster, self.spec.hosts, timeout=timeout)
        return self.host_placement.strategies

    def _start_node_gateways(self, aspec: dict, timeout: float) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from actors.ray_host import gateway_name
        from gateway.ray_gateway import GatewayActor
        from syncopate.cluster_placement import NodeGateways
        spec = self.spec
        # One gateway a node: with a fixed port, gateways of nodes on one machine share it.
        listen = {"host": spec.host, "port": spec.port, "reuse_port": spec.port != 0}

        def make(node_id: str, gid: str):
            return GatewayActor.options(
                name=gateway_name(self.cluster, gid), max_restarts=-1, max_task_retries=0, num_cpus=0,
                max_concurrency=10_000, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                **self._env(),
            ).remote(self.cluster, gid, spec.hosts, aspec, dict(listen))

        self.node_gateways = NodeGateways(make, spec.host, self.announce)
        self.node_gateways.sync()
        self.node_gateways.wait_started(timeout)
        self._node_gateway_state()

    def _node_gateway_state(self) -> None:
        self.gateways = self.node_gateways.handles
        self.ports = self.node_gateways.ports()

    def _supervise_node_gateways(self, timeout: float) -> None:
        """A gateway for every node that joined, none for dead ones; every gateway listening."""
        try:
            self.node_gateways.sync()
            self.node_gateways.ensure_started(timeout=min(timeout, 5.0))
        except Exception as exc:
            log.warning("gateway supervision: %s", exc)
        self._node_gateway_state()

    @property
    def url(self) -> str:
        return self.urls()[0]

    def urls(self) -> list[str]:
        if self.node_gateways is not None:
            return self.node_gateways.urls()
        return [f"http://{self.spec.host}:{p}" for p in self.ports]

    def supervise_once(self, timeout: float = 30.0) -> None:
        """Make sure every gateway listens and the events consumer consumes (Ray restarts a dead
        actor, not what it started), and carry out the `hosts add|remove` requests the gateways
        queued."""
        import ray
        if self.node_gateways is not None:
            self._supervise_node_gateways(timeout)
        else:
            try:
                self.ports = ray.get([g.ensure_started.remote() for g in self.gateways], timeout=timeout)
            except Exception as exc:
                log.warning("gateway supervision: %s", exc)
        if self.events is not None:
            try:
                ray.get(self.events.ready.remote(), timeout=timeout)
            except Exception as exc:
                log.warning("events consumer supervision: %s", exc)
        self._supervise_hosts(timeout)
    # -- elastic hosts (membership: actors/ownership.py) ---------------------------------------------
    def _supervise_hosts(self, timeout: float) -> None:
        import ray
        # Each gateway on its own: one on a dead node must not cost the others' requests.
        refs = [g.host_requests.remote() for g in self.gateways]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(timeout, 5.0))
        batches = []
        for ref in ready:
            try:
                batches.append(ray.get(ref))
            except Exception as exc:
                log.warning("host requests: %s", exc)
        for req in (r for batch in batches for r in batch):
            log.warning("hosts %s %d: requested (view epoch %d)", req["action"], req["n"], req["epoch"])
            try:
                if req["action"] == "add":
                    self.add_hosts(req["n"], timeout)
                elif req["action"] == "remove_slot":
                    self.remove_slots([req["n"]], timeout)
                else:
                    self.remove_hosts(req["n"], timeout)
            except Exception as exc:
                log.warning("hosts %s %d failed: %s", req["action"], req["n"], exc)

    def add_hosts(self, n: int, timeout: float = 120.0) -> list[int]:
        """New host slots after the last one ever used (a removed slot's number is not reused:
        gateways may still hold the handle of the actor that had it); each joins the membership
        view as it starts, and the entities the view now places on it are handed to it by their
        old owners."""
        import ray
        from actors.ray_host import HostActor, host_name
        first = self._next_slot
        strategy = "SPREAD" if self.spec.ray_address else "DEFAULT"
        new = [HostActor.options(name=host_name(self.cluster, i), max_restarts=-1, max_task_retries=0, num_cpus=0,
                                 scheduling_strategy=strategy, max_concurrency=10_000, **self._env())
               .remote(self.cluster, i, self.spec.hosts, self.aspec) for i in range(first, first + n)]
        ray.get([h.ready.remote() for h in new], timeout=timeout)
        self.hosts.update(zip(range(first, first + n), new))
        self._next_slot = first + n
        log.warning("hosts added: slots %s", list(range(first, first + n)))
        return list(range(first, first + n))

    def remove_hosts(self, n: int, timeout: float = 120.0) -> list[int]:
        """The last `n` slots leave (remove_slots)."""
        return self.remove_slots(sorted(self.hosts)[-n:] if n > 0 else [], timeout)

    def remove_slots(self, slots: list[int], timeout: float = 120.0) -> list[int]:
        """These slots leave, one after the other: out of the view, their entities handed off
        (snapshot, release) to the slots that stay, then stopped for good."""
        import ray
        unknown = [s for s in slots if s not in self.hosts]
        if unknown:
            raise ValueError(f"no host in slot {unknown[0]} (slots {sorted(self.hosts)})")
        if len(set(slots)) >= len(self.hosts):
            raise ValueError(f"{len(self.hosts)} hosts: at least one must stay")
        gone = []
        for i in sorted(set(slots), reverse=True):
            h = self.hosts[i]
            try:
                ray.get(h.leave.remote(), timeout=timeout)
                ray.get(h.shutdown.remote(), timeout=timeout)
            finally:
                ray.kill(h, no_restart=True)
                del self.hosts[i]
            gone.append(i)
        log.warning("hosts removed: slots %s", gone)
        return gone

    def reload_catalog(self, timeout: float = 120.0) -> int:
        """Reload the catalog file (docs/rights.md "Takedowns"; `kill -HUP` of `syncopate serve`):
        every host first, then every gateway, which tells the device groups of its devices. A bad
        file changes nothing: the driver loads it first and refuses it. A host restarted later
        builds its catalog from the same file, so it agrees."""
        import ray
        path = _catalog_file(self.spec)
        from catalog import Catalog
        Catalog.from_file(path)          # refuse a bad file before any process takes it
        ray.get([h.reload_catalog.remote(path) for h in self.hosts.values()], timeout=timeout)
        return sum(ray.get([g.reload_catalog.remote(path) for g in self.gateways], timeout=timeout))

    def kill_host(self, i: int) -> None:
        import ray
        ray.kill(self.hosts[i], no_restart=False)

    def kill_gateway(self, i: int) -> None:
        import ray
        ray.kill(self.gateways[i], no_restart=False)

    def stop(self) -> None:
        import ray
        for g in self.gateways:
            try:
                ray.get(g.stop.remote(), timeout=10)
            except Exception:
                pass
        for h in self.hosts.values():
            try:
                ray.get(h.shutdown.remote(), timeout=30)
            except Exception as exc:
                log.warning("host shutdown: %s", exc)
        if self.events is not None:
            try:
                ray.get(self.events.shutdown.remote(), timeout=30)
            except Exception as exc:
                log.warning("events consumer shutdown: %s", exc)
        for a in self.gateways + list(self.hosts.values()) + ([self.events] if self.events is not None else []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        if self.host_placement is not None:
            from syncopate.cluster_placement import release_hosts
            release_hosts(self.host_placement)

    def serve_forever(self) -> None:
        import signal
        stop, reload = [], []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        signal.signal(signal.SIGHUP, lambda *a: reload.append(1))
        try:
            while not stop:
                time.sleep(1.0)
                if reload:
                    reload.clear()
                    try:
                        told = self.reload_catalog()
                        log.info("catalog reloaded; %d device groups told", told)
                    except Exception as exc:          # a bad file: keep serving the old catalog
                        log.error("catalog reload refused: %s", exc)
                self.supervise_once()
        except KeyboardInterrupt:
            pass


class LocalServer:
    """Everything in the calling event loop: hosts, one gateway. For tests and the scale model."""

    def __init__(self, spec: ServerSpec, store=None, *, membership: str | None = None,
                 lease: dict | None = None) -> None:
        self.spec = spec
        self.store = store
        self.cluster = None
        self.gateway = None
        # With a membership name: hosts hold leases and a view, the gateway detects dead hosts and
        # fails over (actors/ownership.py, gateway/cluster_view.py), as a RayServer does.
        self.membership, self.lease = membership, lease

    async def start(self) -> "LocalServer":
        from actors.kinds import load_kinds
        from actors.local import LocalCluster
        from actors.ray_host import build_env
        from gateway.auth import Auth, load_secret
        from gateway.context import GatewayConfig
        from gateway.runner import GatewayServer
        from gateway.stream_sign import STREAM_SECRET_FILE
        from storage.factory import make_store

        spec = self.spec
        loop = asyncio.get_running_loop()
        # file I/O and catalog generation off the event loop
        secret = await loop.run_in_executor(None, load_secret, spec.data_dir, spec.secret_file)
        stream_secret = await loop.run_in_executor(None, load_secret, spec.data_dir, spec.stream_secret_file,
                                                   STREAM_SECRET_FILE)
        if stream_secret == secret:
            raise ValueError("the stream URL key must not be the token signing key")
        store = self.store or make_store(spec.data_dir, spec.redis_url, spec.postgres_dsn, prefix=spec.prefix)
        env = await loop.run_in_executor(None, lambda: build_env(spec.actor_spec()))   # actor_spec resolves a path
        from syncopate.events.publish import Publisher
        from syncopate.events.service import LocalEvents
        self.events = await LocalEvents(spec.data_dir, spec.redis_url, spec.postgres_dsn, spec.prefix).start()
        self.cluster = LocalCluster(store, load_kinds(spec.kinds), env, hosts=spec.hosts, idle_timeout_s=spec.idle_timeout_s,
                                    membership=self.membership, lease=self.lease, publisher=Publisher(self.events.bus))
        await self.cluster.start()
        view = None
        if self.membership:
            from gateway.cluster_view import ClusterView
            view = ClusterView(store, self.membership)
        self.gateway = GatewayServer("g0", lambda receive: self.cluster.transport("g0", receive), Auth(secret),
                                     env.catalog, GatewayConfig(**spec.gateway), events=self.events.counts,
                                     event_bus=self.events.bus,
                                     stream_secret=stream_secret, cluster=view)
        self.port = await self.gateway.start(spec.host, spec.port)
        self.auth = Auth(secret)
        self.secret = secret            # the driver's copy: tools (the simulation harness) mint tokens with it
        return self

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    async def reload_catalog(self) -> int:
        """Reload the catalog file: the hosts and the gateway share one Catalog object here, which
        takes the new content in place; then the gateway tells its device groups. Answers how many."""
        from catalog import Catalog
        path = _catalog_file(self.spec)
        new = await asyncio.get_running_loop().run_in_executor(None, Catalog.from_file, path)
        self.gateway.ctx.catalog.replace_with(new)
        return await self.gateway.ctx.catalog_changed()

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.cluster.close()
        await self.events.close()


def _catalog_file(spec: ServerSpec) -> str:
    if not spec.catalog:
        raise ValueError("the server runs the generated catalog: there is no catalog file to reload "
                         "(serve with --catalog FILE)")
    return spec.catalog
