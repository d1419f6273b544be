"""GatewayActor: a gateway (aiohttp server + hub + dispatcher) running inside a Ray async actor.

It has to be an actor so hosts can push to it (a driver process can't receive actor calls).
Restarted by Ray when it dies; the supervisor (`syncopate serve`) calls ensure_started() every
second, so a restarted gateway listens again on its port and clients reconnect to it.
"""
from __future__ import annotations

import asyncio
import logging

import ray

from actors.ray_host import build_env, host_name
from gateway.auth import Auth
from gateway.context import GatewayConfig
from gateway.runner import GatewayServer

log = logging.getLogger("syncopate.gateway")


class RayTransport:
    def __init__(self, gateway_id: str, handles: list) -> None:
        self.gateway_id = gateway_id
        self.handles = handles

    @property
    def n_hosts(self) -> int:
        return len(self.handles)

    def send(self, host: int, requests: list):
        return asyncio.wrap_future(self.handles[host].submit.remote(self.gateway_id, requests).future())

    async def ping(self, host: int) -> str:
        return await self.handles[host].ping.remote()

    async def stats(self, host: int) -> dict:
        return await self.handles[host].stats.remote()


@ray.remote
class GatewayActor:
    def __init__(self, cluster: str, gateway_id: str, n_hosts: int, spec: dict, listen: dict) -> None:
        from syncopate.logs import setup_logging
        setup_logging(spec.get("log_level", "INFO"), f"gw-{gateway_id}")
        self.cluster, self.gateway_id, self.n_hosts = cluster, gateway_id, n_hosts
        self.spec, self.listen = spec, listen
        self.server: GatewayServer | None = None
        self._starting: asyncio.Future | None = None

    async def ensure_started(self) -> int:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> int:
        loop = asyncio.get_running_loop()
        handles = [await loop.run_in_executor(None, ray.get_actor, host_name(self.cluster, i))
                   for i in range(self.n_hosts)]
        env = await loop.run_in_executor(None, build_env, self.spec)
        cfg = GatewayConfig(**self.spec.get("gateway", {}))
        self.server = GatewayServer(self.gateway_id, lambda receive: RayTransport(self.gateway_id, handles),
                                    Auth(self.spec["secret"]), env.catalog, cfg)
        return await self.server.start(self.listen.get("host", "127.0.0.1"), self.listen.get("port", 0),
                                       reuse_port=self.listen.get("reuse_port", False))

    async def deliver(self, host: int, incarnation: str, items: list) -> None:
        if self.server is not None:
            self.server.receive(host, incarnation, items)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
