"""HostActor: the Ray adapter around EntityHost. One Ray async actor hosts many entities.

Not one actor per entity: each Ray actor is a worker process (100 actors took 27 s to create on
this machine, ../shared/reference/runtime-anchors.md), and the product must hold millions.
Ray restarts a dead host (max_restarts=-1), in place or on another node; in-memory state is gone,
the new process starts at once and joins the membership view (it does not wait for a call: nobody
calls a slot out of the view), and entities re-activate from the store on their next message. max_task_retries=0: a call is delivered at most
once, and the gateway retries explicitly (with op ids) when a host fails, so nothing runs twice
without the entity's idempotency check seeing it.
"""
from __future__ import annotations

import asyncio
import logging

import ray

from actors.batching import Batcher
from actors.entity import Command, Env
from actors.host import EntityHost
from actors.membership import route
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply

log = logging.getLogger("syncopate.host")


def host_name(cluster: str, index: int) -> str:
    return f"{cluster}-host-{index}"


def gateway_name(cluster: str, gateway_id: str) -> str:
    return f"{cluster}-gw-{gateway_id}"


def restore_priority() -> None:
    """Tune a host or gateway process for latency.

    Ray starts worker processes at nice 15 (background work); hosts and gateways are the
    latency-critical service on the machine, so they take the normal priority back.
    The store's commit thread hands the GIL back and forth with the event loop on every SQLite
    call; with CPython's default 5 ms switch interval a busy loop makes each hand-off wait up to
    5 ms (measured: a 20-record commit took 2.9 ms). 0.5 ms keeps the hand-offs short.
    """
    import os
    import sys
    sys.setswitchinterval(0.0005)
    # Fewer, cheaper collections: the young generation is collected every 700 allocations by
    # default, and each full collection walks every long-lived object (measured: 0.4 s for a
    # million in a gateway holding 20,000 sockets). Startup objects (the catalog) are frozen out
    # of collection once loaded (freeze_startup()).
    import gc
    gc.set_threshold(50_000, 20, 100)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:            # not allowed to lower niceness (unprivileged): run as Ray set it
        pass


def freeze_startup() -> None:
    """Move everything allocated so far (catalog, modules) out of the collector's sight."""
    import gc
    gc.collect()
    gc.freeze()


def channel_bind(spec: dict) -> str:
    """The address this host's channel binds, and advertises in ready(): `spec["channel_bind"]`,
    "node" for the IP Ray reports for the node the host runs on (what gateways on other nodes
    can reach). A wildcard is refused: ready() must advertise the address bound, and 0.0.0.0 is
    neither reachable nor a choice of interface."""
    bind = spec.get("channel_bind") or "127.0.0.1"
    if bind == "node":
        return ray.util.get_node_ip_address()
    check_channel_bind(bind)
    return bind


def check_channel_bind(bind: str) -> None:
    import ipaddress
    try:
        wildcard = ipaddress.ip_address(bind).is_unspecified
    except ValueError:                   # a host name: bound as it resolves
        wildcard = bind in ("", "*")
    if wildcard:
        raise ValueError(f"the host channel can't bind the wildcard {bind!r}: give the address gateways reach")


def build_env(spec: dict) -> Env:
    from catalog import Catalog
    path = spec.get("catalog")
    return Env(catalog=Catalog.from_file(path) if path else Catalog.generated(), config=spec.get("limits", {}))


@ray.remote
class HostActor:
    def __init__(self, cluster: str, index: int, n_hosts: int, spec: dict) -> None:
        from syncopate.logs import setup_logging
        setup_logging(spec.get("log_level", "INFO"), f"host-{index}")
        restore_priority()
        self.cluster, self.index, self.n_hosts, self.spec = cluster, index, n_hosts, spec
        self._collector = None          # (schedule, task) once started (actors/collector.py)
        self._stalls = None             # the stall recorder, when SYNCOPATE_STALLS asks for it
        self.host: EntityHost | None = None
        self._starting: asyncio.Future | None = None
        self._stopping = False
        self._peers: dict[int, asyncio.Future] = {}
        self._to_peers = Batcher(self._send_to_peer)
        # Start now, not on the first call. A host Ray restarts (its node died) must join the view
        # by itself: by then the gateways have usually removed its slot, and nobody calls a slot
        # that is not in the view (gateways ping, route to and report only the view's slots; peers
        # route by it), so a host that waited for a call stayed out for good (issue #13). Ray runs
        # an async actor's __init__ on the actor's event loop.
        self._boot = asyncio.get_running_loop().create_task(self._start_until_started(), name=f"host-{index}-boot")

    async def _ensure(self) -> EntityHost:
        if self._starting is None or _failed(self._starting):
            self._starting = asyncio.ensure_future(self._start())
        # Every call awaits the same future; waiters resume in arrival order, so batches from one
        # gateway are still enqueued in the order they were sent.
        return await asyncio.shield(self._starting)

    async def _start_until_started(self) -> None:
        """Start, again after a failure (the store unreachable for a moment): nobody else may ever
        ask this host to start (above)."""
        delay = 0.5
        while not self._stopping:
            try:
                await self._ensure()
                return
            except Exception as exc:
                log.warning("host %d: start failed (%s: %s); again in %.1f s", self.index,
                            type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)          # a backoff, not a wait for an event
            delay = min(delay * 2, 10.0)

    async def _start(self) -> EntityHost:
        opened: list = []                        # closed again if the start fails: a retry starts clean
        try:
            return await self._open(opened)
        except BaseException:
            for close in reversed(opened):
                try:
                    await close()
                except Exception as exc:
                    log.warning("host %d: closing after a failed start: %s", self.index, exc)
            raise

    async def _open(self, opened: list) -> EntityHost:
        from actors.channel import ChannelServer
        from actors.channel_auth import read_key_file
        from actors.kinds import load_kinds
        from storage.factory import make_store

        spec = self.spec
        await asyncio.get_running_loop().run_in_executor(None, _check_data_dir, spec)    # file I/O: off the loop
        store = make_store(spec["data_dir"], spec.get("redis_url"), spec.get("postgres_dsn"),
                           prefix=spec.get("prefix", "syncopate_"))
        await store.start()
        opened.append(store.close)
        from syncopate.events.bus import make_log
        from syncopate.events.publish import Publisher
        # Accepted listening events leave through the outbox to the bus (syncopate/events/publish.py).
        self.events_bus = make_log(spec["data_dir"], spec.get("redis_url"), prefix=spec.get("prefix", "syncopate_"))
        await self.events_bus.start()
        opened.append(self.events_bus.close)
        publisher = Publisher(self.events_bus)
        loop = asyncio.get_running_loop()
        env = await loop.run_in_executor(None, build_env, spec)
        # The key is read from its file (spec["channel_secret_file"]), never passed in the spec.
        channel_secret = await loop.run_in_executor(None, read_key_file, spec["channel_secret_file"])
        budgets = await loop.run_in_executor(None, _budgets, spec.get("budgets", {}))   # psutil reads /proc
        host = EntityHost(f"host-{self.index}", store, load_kinds(spec.get("kinds")), env,
                          deliver=lambda gw, items: self._to_gateways.add(gw, items),
                          dispatch=publisher.wrap(self._dispatch),
                          idle_timeout_s=spec.get("idle_timeout_s", 600.0), **budgets)
        self.channel = ChannelServer(host, channel_secret, self.index)
        for name in ("max_frame", "max_item", "max_buffer"):
            if name in spec.get("budgets", {}):
                setattr(self.channel, name, int(spec["budgets"][name]))
        self._to_gateways = Batcher(self.channel.send)
        self.addr = await self.channel.start(channel_bind(spec), 0)
        opened.append(self.channel.close)
        _join_membership(host, self.cluster, self.index, spec)
        opened.append(lambda: host.close(passivate=False))
        await host.start()                       # with a membership: the lease, and the slot in the view
        freeze_startup()
        from actors import collector
        self._collector = collector.start(f"host-{self.index}")     # cyclic garbage freed on a clock
        from syncopate.memdebug import maybe_start
        self._memprobe = maybe_start(f"host-{self.index}")      # opt-in (SYNCOPATE_TRACEMALLOC)
        from syncopate import stalls
        self._stalls = stalls.maybe_start(f"host-{self.index}")  # opt-in (SYNCOPATE_STALLS)
        self.host = host
        log.info("host %d ready (incarnation %s, store %s, channel %s:%d)", self.index, host.incarnation,
                 store.name, *self.addr)
        return host

    # -- called by gateways and peers ---------------------------------------------------------
    async def ready(self) -> dict:
        """Where gateways open their stream to this host (actors/channel.py), and who it is."""
        host = await self._ensure()
        return {"incarnation": host.incarnation, "addr": list(self.addr), "index": self.index}

    async def tell(self, commands: list[Command]) -> list[Reply]:
        """Effects and asks from a peer host: answered once each is released (committed if it wrote),
        so the source can drop an effect from its outbox (a retryable failure makes the source send it
        again), and an ask's command runs with the answer."""
        host = await self._ensure()
        loop = asyncio.get_running_loop()
        futs = []
        for cmd in commands:
            fut = loop.create_future()
            host.enqueue(cmd, lambda reply, fut=fut: fut.done() or fut.set_result(reply))
            futs.append(fut)
        return list(await asyncio.gather(*futs))

    async def reload_catalog(self, path: str) -> int:
        """A catalog reload (docs/rights.md): this host's entities see the new catalog from their next
        command on (the Env's catalog is replaced in place). Answers the track count."""
        from catalog import Catalog
        host = await self._ensure()
        new = await asyncio.get_running_loop().run_in_executor(None, Catalog.from_file, path)
        host.env.catalog.replace_with(new)
        return len(new)

    async def ping(self) -> str:
        return (await self._ensure()).incarnation

    async def stats(self) -> dict:
        host = await self._ensure()
        try:
            store_ok = await asyncio.wait_for(host.store.ping(), timeout=2.0)
        except Exception:
            store_ok = False
        return {**host.stats(), "store": host.store.name, "store_ok": store_ok, "index": self.index}

    async def leave(self) -> dict:
        """`syncopate hosts remove`: out of the membership view, every entity handed off (snapshot,
        release), so the hosts that get them take over at once. Then the driver shuts it down."""
        host = await self._ensure()
        await host.leave()
        return {"index": self.index, "handoffs": host.metrics.handoffs}

    async def shutdown(self) -> None:
        """Clean stop: snapshot every entity (passivate) so the next start activates fast."""
        self._stopping = True
        # A start still under way finishes first (or fails): else it would open what this closes.
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        self._boot.cancel()
        if self._collector is not None:
            self._collector[1].cancel()
        if self._stalls is not None:
            self._stalls.stop()
        if self.host is not None:
            await self.host.close(passivate=True)
            await self.host.store.close()
            await self.events_bus.close()
            await self.channel.close()

    # -- outbound ------------------------------------------------------------------------------
    def _resolve(self, name: str) -> asyncio.Future:
        # ray.get_actor is a blocking GCS lookup: run it off the event loop.
        return asyncio.get_running_loop().run_in_executor(None, lambda: ray.get_actor(name))

    def _dispatch(self, cmd: Command) -> asyncio.Future:
        """An effect (or an ask, actors/asks.py) to its owner; the future resolves to the target's
        Reply (the host's outbox retries an effect until that Reply is not a retryable failure; an
        ask's Reply is the answer the asking command runs with)."""
        fut = asyncio.get_running_loop().create_future()
        target = route(cmd.key, self.host.view if self.host.leased else None, self.n_hosts)
        if target == self.index:
            self.host.enqueue(cmd, lambda reply: fut.done() or fut.set_result(reply))
        else:
            self._to_peers.add(target, [(cmd, fut)])
        return fut

    def _send_to_peer(self, index: int, batch: list) -> None:
        asyncio.ensure_future(self._tell_peer(index, batch))

    async def _tell_peer(self, index: int, batch: list) -> None:
        try:
            fut = self._peers.get(index)
            if fut is None:
                fut = self._peers[index] = self._resolve(host_name(self.cluster, index))
            try:
                handle = await fut
            except Exception:
                self._peers.pop(index, None)
                raise
            # Bounded: a peer that hangs must not hold the effects forever; the outbox re-sends them.
            replies = await asyncio.wait_for(handle.tell.remote([cmd for cmd, _ in batch]), PEER_TIMEOUT_S)
        except Exception as exc:
            log.warning("host %d unreachable (%s); %d effects will be retried", index, type(exc).__name__, len(batch))
            err = SyncopateError(ErrorCode.HOST_UNAVAILABLE, f"host {index} unreachable")
            replies = [Reply.fail(err)] * len(batch)
        for (_, f), reply in zip(batch, replies):
            if not f.done():
                f.set_result(reply)


PEER_TIMEOUT_S = 30.0


def _failed(fut: asyncio.Future) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None)


def _join_membership(host: EntityHost, cluster: str, index: int, spec: dict) -> None:
    """Membership, leases and fencing (actors/ownership.py), on every store that keeps them
    (all but Redis alone, which the factory never builds for serve): the host joins the view of
    deployment `cluster` as slot `index` when it starts, Ray's restart of it joins again."""
    if host.store.leases:
        host.join_membership(cluster, index, lease_s=float(spec.get("lease_s", 2.0)),
                             renew_s=float(spec.get("renew_s", 0.4)))


def _check_data_dir(spec: dict) -> None:
    """SQLite on a cluster: this node must see the data dir the driver wrote (syncopate/cluster_store.py)."""
    from syncopate.cluster_store import verify_shared_data_dir
    verify_shared_data_dir(spec, where=f"node {ray.util.get_node_ip_address()}")


def _budgets(spec: dict) -> dict:
    """The host's budgets from the server spec's `budgets` (defaults in actors/host.py). The memory
    budget is this process's RSS: `max_memory_mb` (default 1,024 MB)."""
    out = {k: int(spec[k]) for k in ("max_active", "max_mailbox", "max_pending") if k in spec}
    import psutil
    proc = psutil.Process()
    out["max_memory"] = int(spec.get("max_memory_mb", 1024)) << 20
    out["memory"] = lambda: proc.memory_info().rss
    return out
