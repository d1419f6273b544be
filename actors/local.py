"""In-process cluster: the same EntityHosts and channel as on Ray, wired by direct calls.

Used by unit/integration tests that don't need process isolation, and by the simulation's scale
model. Everything crosses the same Batcher-based channel as on Ray, so ordering and batching
behave the same; only the process boundary (pickling, Ray's scheduler) is missing.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from actors.batching import Batcher
from actors.devicegroup_events import EVENTBUS
from actors.entity import Command, Entity, Env
from actors.host import EntityHost
from actors.placement import owner
from storage.base import Store

log = logging.getLogger("syncopate.local")


class LocalCluster:
    def __init__(self, store: Store, kinds: dict[str, type[Entity]], env: Env, *, hosts: int = 1,
                 idle_timeout_s: float = 600.0, clock=None, publisher=None) -> None:
        self.store = store
        # EVENTBUS effects (accepted listening events) to the event bus (syncopate/events/publish.py).
        # Without a publisher (entity tests, the scale model) they are taken over and dropped: that
        # cluster has no pipeline.
        self._dispatch = publisher.wrap(self.tell) if publisher is not None else self._no_pipeline
        self.n_hosts = hosts
        self.gateways: dict[str, Callable[[int, str, list], None]] = {}
        self.transports: list[LocalTransport] = []
        self.hosts: list[EntityHost] = []
        for i in range(hosts):
            out = Batcher(lambda gw, items, i=i: self._to_gateway(i, gw, items))
            extra = {"clock": clock} if clock else {}
            self.hosts.append(EntityHost(f"host-{i}", store, kinds, env, deliver=out.add,
                                         dispatch=self._dispatch, idle_timeout_s=idle_timeout_s, **extra))

    async def start(self) -> None:
        await self.store.start()
        for h in self.hosts:
            await h.start()

    async def close(self, *, passivate: bool = True) -> None:
        for h in self.hosts:
            await h.close(passivate=passivate)
        await self.store.close()

    def host_for(self, key: str) -> EntityHost:
        return self.hosts[owner(key, self.n_hosts)]

    def tell(self, cmd: Command) -> asyncio.Future:
        """An effect or an ask between entities: the future resolves to the target's Reply once
        released (the source's outbox retries a retryable failure and logs a refusal; an ask's
        refusal is the answer of the command that asked)."""
        fut = asyncio.get_running_loop().create_future()

        def done(reply):
            if reply.error is not None:
                log.debug("%s on %s failed: %s", cmd.op, cmd.key, reply.error)
            if not fut.done():
                fut.set_result(reply)
        self.host_for(cmd.key).enqueue(cmd, done)
        return fut

    def _no_pipeline(self, cmd: Command):
        if cmd.kind == EVENTBUS:
            return None
        return self.tell(cmd)

    def _to_gateway(self, host: int, gateway_id: str, items: list) -> None:
        receive = self.gateways.get(gateway_id)
        if receive is not None:
            receive(host, self.hosts[host].incarnation, items)

    def transport(self, gateway_id: str, receive: Callable[[int, str, list], None]) -> "LocalTransport":
        self.gateways[gateway_id] = receive
        transport = LocalTransport(self, gateway_id)
        self.transports.append(transport)
        return transport

    def restart_host(self, i: int) -> EntityHost:
        """Simulate a crash: drop host i with everything in memory, start a fresh one in its slot."""
        for transport in self.transports:
            transport.on_lost(i)            # what the old host held will never be answered
        old = self.hosts[i]
        for t in old._tasks:
            t.cancel()
        new = EntityHost(old.host_id, self.store, old.kinds, old.env, deliver=Batcher(
            lambda gw, items: self._to_gateway(i, gw, items)).add, dispatch=self._dispatch,
            idle_timeout_s=old.idle_timeout_s, clock=old.clock)
        self.hosts[i] = new
        asyncio.get_running_loop().create_task(new.start())
        return new


class LocalTransport:
    def __init__(self, cluster: LocalCluster, gateway_id: str) -> None:
        self.cluster = cluster
        self.gateway_id = gateway_id
        self.on_reset = lambda host: None
        self.on_lost = lambda host: None

    @property
    def n_hosts(self) -> int:
        return self.cluster.n_hosts

    def send(self, host: int, requests: list) -> None:
        self.cluster.hosts[host].submit(self.gateway_id, requests)

    async def ping(self, host: int) -> str:
        return self.cluster.hosts[host].incarnation

    async def stats(self, host: int) -> dict:
        h = self.cluster.hosts[host]
        try:
            store_ok = await h.store.ping()
        except Exception:
            store_ok = False
        return {**h.stats(), "store": h.store.name, "store_ok": store_ok, "index": host}
