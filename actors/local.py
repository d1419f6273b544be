"""In-process cluster: the same EntityHosts and channel as on Ray, wired by direct calls.

Used by unit/integration tests that don't need process isolation, and by the simulation's scale
model. Everything crosses the same Batcher-based channel as on Ray, so ordering and batching
behave the same; only the process boundary (pickling, Ray's scheduler) is missing.

With `membership=NAME` the hosts hold leases and a membership view as on Ray, and `kill_host(i)`
is a node loss (the host stops dead: no answer, no renewal, its stream gone), `revive(i)` Ray's
restart of it, and `add_host()` / `remove_host(i)` the elastic operations.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from actors.batching import Batcher
from actors.devicegroup_events import EVENTBUS
from actors.entity import Command, Entity, Env
from actors.host import EntityHost
from actors.membership import route
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply
from storage.base import Store

log = logging.getLogger("syncopate.local")


class LocalCluster:
    def __init__(self, store: Store, kinds: dict[str, type[Entity]], env: Env, *, hosts: int = 1,
                 idle_timeout_s: float = 600.0, clock=None, membership: str | None = None,
                 lease: dict | None = None, publisher=None) -> None:
        self.store = store
        # EVENTBUS effects (accepted listening events) to the event bus (syncopate/events/publish.py).
        # Without a publisher (entity tests, the scale model) they are taken over and dropped: that
        # cluster has no pipeline.
        self._publisher = publisher
        self._dispatch = publisher.wrap(self.tell) if publisher is not None else self._no_pipeline
        self.n_hosts = hosts
        self.kinds, self.env, self.idle_timeout_s, self.clock = kinds, env, idle_timeout_s, clock
        self.membership, self.lease = membership, lease or {}
        self.gateways: dict[str, Callable[[int, str, list], None]] = {}
        self.transports: list[LocalTransport] = []
        self.hosts: list[EntityHost] = [self._new_host(i) for i in range(hosts)]
        self.dead: set[int] = set()

    def _host_dispatch(self, i: int):
        """Host i's effects: placed by its own view (tell via=i), EVENTBUS through the publisher."""
        tell = lambda cmd: self.tell(cmd, via=i)       # noqa: E731
        if self._publisher is not None:
            return self._publisher.wrap(tell)
        return lambda cmd: None if cmd.kind == EVENTBUS else tell(cmd)

    def _new_host(self, i: int) -> EntityHost:
        out = Batcher(lambda gw, items, i=i: self._to_gateway(i, gw, items))
        extra = {"clock": self.clock} if self.clock else {}
        h = EntityHost(f"host-{i}", self.store, self.kinds, self.env, deliver=out.add,
                       dispatch=self._host_dispatch(i), idle_timeout_s=self.idle_timeout_s, **extra)
        if self.membership:
            h.join_membership(self.membership, i, **self.lease)
        return h

    async def start(self) -> None:
        await self.store.start()
        for h in self.hosts:
            await h.start()

    async def close(self, *, passivate: bool = True) -> None:
        for i, h in enumerate(self.hosts):
            if i not in self.dead:              # a killed host has nothing left to close
                await h.close(passivate=passivate)
        await self.store.close()

    def slot_for(self, key: str, via: int | None = None) -> int:
        view = self.hosts[via].view if via is not None and self.membership else None
        return route(key, view, self.n_hosts)

    def host_for(self, key: str) -> EntityHost:
        return self.hosts[self.slot_for(key)]

    def tell(self, cmd: Command, via: int | None = None) -> asyncio.Future:
        """An effect or an ask between entities (from host `via`, placed by its view): the future
        resolves to the target's Reply once released (the source's outbox retries a retryable
        failure and logs a refusal; an ask's refusal is the answer of the command that asked)."""
        fut = asyncio.get_running_loop().create_future()
        target = self.slot_for(cmd.key, via)
        if target in self.dead or target >= len(self.hosts):
            fut.set_result(Reply.fail(SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"host {target} unreachable")))
            return fut

        def done(reply):
            if reply.error is not None:
                log.debug("%s on %s failed: %s", cmd.op, cmd.key, reply.error)
            if not fut.done():
                fut.set_result(reply)
        self.hosts[target].enqueue(cmd, done)
        return fut

    def _no_pipeline(self, cmd: Command):
        if cmd.kind == EVENTBUS:
            return None
        return self.tell(cmd)

    def _to_gateway(self, host: int, gateway_id: str, items: list) -> None:
        receive = self.gateways.get(gateway_id)
        if receive is not None and host not in self.dead:
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
        new = self.hosts[i] = self._new_host(i)
        asyncio.get_running_loop().create_task(new.start())
        return new


    # -- node loss and elastic hosts (with a membership) ------------------------------------------
    def kill_host(self, i: int) -> None:
        """A node loss: host i stops dead (no answers, no lease renewal); its streams break."""
        h = self.hosts[i]
        self.dead.add(i)
        h._closed = True
        for t in [*h._tasks, *h._background]:
            t.cancel()
        for transport in self.transports:
            transport.on_lost(i)

    async def revive(self, i: int) -> EntityHost:
        """Ray's restart of host i: a new process in the slot (it joins the view again)."""
        new = self.hosts[i] = self._new_host(i)
        await new.start()
        self.dead.discard(i)
        return new

    async def add_host(self) -> int:
        i = len(self.hosts)
        self.hosts.append(self._new_host(i))
        await self.hosts[i].start()
        return i

    async def remove_host(self, i: int) -> None:
        """Leave on purpose: out of the view, every entity handed off, then stopped."""
        await self.hosts[i].leave()
        await self.hosts[i].close(passivate=True)
        self.dead.add(i)


class LocalTransport:
    def __init__(self, cluster: LocalCluster, gateway_id: str) -> None:
        self.cluster = cluster
        self.gateway_id = gateway_id
        self.on_reset = lambda host: None
        self.on_lost = lambda host: None

    @property
    def n_hosts(self) -> int:
        return self.cluster.n_hosts

    def connected(self, host: int) -> bool:
        return host < len(self.cluster.hosts) and host not in self.cluster.dead

    def send(self, host: int, requests: list) -> None:
        if not self.connected(host):
            raise ConnectionError(f"host {host} unreachable")
        self.cluster.hosts[host].submit(self.gateway_id, requests)

    async def ping(self, host: int) -> str:
        if not self.connected(host):
            raise ConnectionError(f"host {host} unreachable")
        return self.cluster.hosts[host].incarnation

    async def stats(self, host: int) -> dict:
        if not self.connected(host):
            raise ConnectionError(f"host {host} unreachable")
        h = self.cluster.hosts[host]
        try:
            store_ok = await h.store.ping()
        except Exception:
            store_ok = False
        return {**h.stats(), "store": h.store.name, "store_ok": store_ok, "index": host}
