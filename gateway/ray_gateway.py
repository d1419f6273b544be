"""GatewayActor: a gateway (aiohttp server + hub + dispatcher) running inside a Ray async actor.

Ray places it, restarts it and gives it the hosts' handles; commands and pushes travel on the
direct streams of gateway/stream_transport.py. Restarted by Ray when it dies; the supervisor (`syncopate serve`) calls ensure_started() every
second, so a restarted gateway listens again on its port and clients reconnect to it.
"""
from __future__ import annotations

import asyncio
import logging

import ray

from actors.ray_host import build_env, freeze_startup, host_name, restore_priority
from gateway.auth import Auth, read_secret
from gateway.context import GatewayConfig
from gateway.runner import GatewayServer
from gateway.stream_transport import StreamTransport

log = logging.getLogger("syncopate.gateway")


def listen_host(host: str) -> str:
    """The address to bind: "node" is the IP Ray reports for the node this gateway runs on."""
    return ray.util.get_node_ip_address() if host == "node" else host


def node_info() -> dict:
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}


@ray.remote
class GatewayActor:
    def __init__(self, cluster: str, gateway_id: str, n_hosts: int, spec: dict, listen: dict) -> None:
        from syncopate.logs import setup_logging
        setup_logging(spec.get("log_level", "INFO"), f"gw-{gateway_id}")
        restore_priority()
        self.cluster, self.gateway_id, self.n_hosts = cluster, gateway_id, n_hosts
        self.spec, self.listen = spec, listen
        self._collector = None          # (schedule, task) once started (actors/collector.py)
        self._stalls = None             # the stall recorder, when SYNCOPATE_STALLS asks for it
        self.server: GatewayServer | None = None
        self._host_requests: list[dict] = []
        self._starting: asyncio.Future | None = None

    async def ensure_started(self) -> int:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> int:
        loop = asyncio.get_running_loop()
        # The first slots that still exist: one removed (`syncopate hosts remove`) is gone, and a
        # gateway Ray restarts after that must start without it (placement follows the view).
        handles = {}
        for i in range(self.n_hosts):
            try:
                handles[i] = await loop.run_in_executor(None, ray.get_actor, host_name(self.cluster, i))
            except ValueError:
                log.info("host slot %d is gone (removed): not connected", i)
        env = await loop.run_in_executor(None, build_env, self.spec)
        # Both keys are read from their files: the spec carries paths only (gateway/auth.py).
        token_secret = await loop.run_in_executor(None, read_secret, self.spec["secret_file"])
        channel_secret = await loop.run_in_executor(None, read_secret, self.spec["channel_secret_file"])
        stream_file = self.spec.get("stream_secret_file")
        stream_secret = await loop.run_in_executor(None, read_secret, stream_file) if stream_file else None
        cfg = GatewayConfig(**self.spec.get("gateway", {}))
        from syncopate.events.counts import make_counts
        # recently played and the stream counts read the event pipeline's store (docs/events.md)
        self.events = make_counts(self.spec["data_dir"], self.spec.get("postgres_dsn"), self.spec.get("prefix", "syncopate_"))
        await self.events.start()
        from syncopate.events.bus import make_log
        # its bus: a user's erasure removes their entries from it (syncopate/events/erasure.py)
        self.event_bus = make_log(self.spec["data_dir"], self.spec.get("redis_url"), self.spec.get("prefix", "syncopate_"))
        await self.event_bus.start()
        view, resolve = self._membership()
        self.server = GatewayServer(
            self.gateway_id,
            lambda receive: StreamTransport(self.gateway_id, handles, channel_secret, receive, resolve=resolve,
                                            n_hosts=self.n_hosts),
            Auth(token_secret), env.catalog, cfg, events=self.events, cluster=view, event_bus=self.event_bus,
            stream_secret=stream_secret)
        self.server.ctx.host_control = lambda req: self._host_requests.append(req)   # the list is swapped when taken
        self.server.info = node_info()               # /healthz says which node this gateway is on
        await self.server.transport.start()          # a stream to every host before the first client
        freeze_startup()
        from actors import collector
        self._collector = collector.start(f"gateway-{self.gateway_id}")   # cyclic garbage freed on a clock
        from syncopate.memdebug import maybe_start
        self._memprobe = maybe_start(f"gateway-{self.gateway_id}")   # opt-in (SYNCOPATE_TRACEMALLOC)
        from syncopate import stalls
        self._stalls = stalls.maybe_start(f"gateway-{self.gateway_id}")  # opt-in (SYNCOPATE_STALLS)
        return await self.server.start(listen_host(self.listen.get("host", "127.0.0.1")), self.listen.get("port", 0),
                                       reuse_port=self.listen.get("reuse_port", False))

    async def reload_catalog(self, path: str) -> int:
        """After every host reloaded (RayServer.reload_catalog): this gateway's catalog, then the
        device groups of its devices are told (GatewayContext.catalog_changed). Answers how many."""
        from catalog import Catalog
        await self.ensure_started()
        new = await asyncio.get_running_loop().run_in_executor(None, Catalog.from_file, path)
        self.server.ctx.catalog.replace_with(new)
        return await self.server.ctx.catalog_changed()

    def _membership(self):
        """The membership view (gateway/cluster_view.py) on a store of the gateway's own, and how
        to find a host slot added at runtime. Placement follows the view; this gateway removes
        hosts it finds dead from it."""
        from gateway.cluster_view import ClusterView
        from storage.factory import make_store
        spec = self.spec
        store = make_store(spec["data_dir"], spec.get("redis_url"), spec.get("postgres_dsn"),
                           prefix=spec.get("prefix", "syncopate_"))
        view = ClusterView(store, self.cluster, own_store=True) if store.leases else None

        async def resolve(slot: int):
            return await asyncio.get_running_loop().run_in_executor(None, ray.get_actor, host_name(self.cluster, slot))

        return view, resolve

    async def host_requests(self) -> list:
        """`syncopate hosts add|remove` requests the admin API queued here, for the driver to carry
        out (it owns the host actors); taken once."""
        out, self._host_requests = self._host_requests, []
        return out

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector[1].cancel()
        if self._stalls is not None:
            self._stalls.stop()
        if self.server is not None:
            await self.server.stop()
            await self.events.close()
            await self.event_bus.close()
