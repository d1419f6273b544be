"""HostActor: the Ray adapter around EntityHost. One Ray async actor hosts many entities.

Not one actor per entity: each Ray actor is a worker process (100 actors took 27 s to create on
this machine, ../shared/reference/runtime-anchors.md), and the product must hold millions.
Ray restarts a dead host in place (max_restarts=-1); in-memory state is gone and entities
re-activate from the store on their next message. max_task_retries=0: a call is delivered at most
once, and the gateway retries explicitly (with op ids) when a host fails, so nothing runs twice
without the entity's idempotency check seeing it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.batching import Batcher
from actors.entity import Command, Env
from actors.host import EntityHost
from actors.placement import owner

log = logging.getLogger("syncopate.host")


def host_name(cluster: str, index: int) -> str:
    return f"{cluster}-host-{index}"


def gateway_name(cluster: str, gateway_id: str) -> str:
    return f"{cluster}-gw-{gateway_id}"


def build_env(spec: dict) -> Env:
    from catalog import Catalog
    path = spec.get("catalog")
    return Env(catalog=Catalog.from_file(path) if path else Catalog.generated(), config=spec.get("limits", {}))


@ray.remote
class HostActor:
    def __init__(self, cluster: str, index: int, n_hosts: int, spec: dict) -> None:
        from syncopate.logs import setup_logging
        setup_logging(spec.get("log_level", "INFO"), f"host-{index}")
        self.cluster, self.index, self.n_hosts, self.spec = cluster, index, n_hosts, spec
        self.host: EntityHost | None = None
        self._starting: asyncio.Future | None = None
        self._gateways: dict[str, Any] = {}
        self._resolving: dict[str, asyncio.Future] = {}
        self._peers: dict[int, asyncio.Future] = {}
        self._to_gateways = Batcher(self._send_to_gateway)
        self._to_peers = Batcher(self._send_to_peer)

    async def _ensure(self) -> EntityHost:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        # Every call awaits the same future; waiters resume in arrival order, so batches from one
        # gateway are still enqueued in the order they were sent.
        return await asyncio.shield(self._starting)

    async def _start(self) -> EntityHost:
        from actors.kinds import load_kinds
        from storage.factory import make_store

        spec = self.spec
        store = make_store(spec["data_dir"], spec.get("redis_url"), spec.get("postgres_dsn"),
                           prefix=spec.get("prefix", "syncopate_"))
        await store.start()
        env = await asyncio.get_running_loop().run_in_executor(None, build_env, spec)
        host = EntityHost(f"host-{self.index}", store, load_kinds(spec.get("kinds")), env,
                          deliver=self._to_gateways.add, dispatch=self._dispatch,
                          idle_timeout_s=spec.get("idle_timeout_s", 600.0))
        await host.start()
        self.host = host
        log.info("host %d ready (incarnation %s, store %s)", self.index, host.incarnation, store.name)
        return host

    # -- called by gateways and peers ---------------------------------------------------------
    async def ready(self) -> str:
        return (await self._ensure()).incarnation

    async def submit(self, gateway_id: str, requests: list) -> None:
        host = await self._ensure()
        if gateway_id not in self._gateways:
            # First batch from this gateway (since this incarnation started): learn its handle before
            # anything is enqueued, so every answer and push for it has somewhere to go. Waiters on
            # the same lookup resume in arrival order, which keeps the gateway's batches in order.
            fut = self._resolving.get(gateway_id)
            if fut is None:
                fut = self._resolving[gateway_id] = self._resolve(gateway_name(self.cluster, gateway_id))
            handle = await asyncio.shield(fut)
            self._gateways.setdefault(gateway_id, handle)
        host.submit(gateway_id, requests)

    async def tell(self, commands: list[Command]) -> None:
        host = await self._ensure()
        for cmd in commands:
            host.enqueue(cmd, _log_failure(cmd))

    async def ping(self) -> str:
        return (await self._ensure()).incarnation

    async def stats(self) -> dict:
        host = await self._ensure()
        try:
            store_ok = await asyncio.wait_for(host.store.ping(), timeout=2.0)
        except Exception:
            store_ok = False
        return {**host.stats(), "store": host.store.name, "store_ok": store_ok, "index": self.index}

    async def shutdown(self) -> None:
        """Clean stop: snapshot every entity (passivate) so the next start activates fast."""
        if self.host is not None:
            await self.host.close(passivate=True)
            await self.host.store.close()

    # -- outbound ------------------------------------------------------------------------------
    def _resolve(self, name: str) -> asyncio.Future:
        # ray.get_actor is a blocking GCS lookup: run it off the event loop.
        return asyncio.get_running_loop().run_in_executor(None, lambda: ray.get_actor(name))

    def _send_to_gateway(self, gateway_id: str, items: list) -> None:
        handle = self._gateways.get(gateway_id)
        if handle is None:
            log.warning("no handle for gateway %s; %d items dropped", gateway_id, len(items))
            return
        # Fire and forget: one Ray call per gateway per loop turn carries every reply and push.
        handle.deliver.remote(self.index, self.host.incarnation, items)

    def _dispatch(self, cmd: Command) -> None:
        target = owner(cmd.key, self.n_hosts)
        if target == self.index:
            self.host.enqueue(cmd, _log_failure(cmd))
        else:
            self._to_peers.add(target, [cmd])

    def _send_to_peer(self, index: int, cmds: list) -> None:
        fut = self._peers.get(index)
        if fut is None:
            fut = self._peers[index] = self._resolve(host_name(self.cluster, index))

        def go(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                self._peers.pop(index, None)
                log.warning("host %d unreachable; %d effects dropped", index, len(cmds))
                return
            f.result().tell.remote(cmds)

        if fut.done():
            go(fut)
        else:
            fut.add_done_callback(go)


def _log_failure(cmd: Command):
    def sink(ok: bool, payload: Any, version: int) -> None:
        if not ok:
            log.warning("effect %s on %s failed: %s", cmd.op, cmd.key, payload)
    return sink
