"""GatewayServer: one gateway (hub + dispatcher + aiohttp site), independent of how hosts are reached.

The Ray gateway actor (gateway/ray_gateway.py) and the in-process server (tests, scale model)
both run this; only the transport differs.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

from aiohttp import web

from actors.entity import Command
from gateway.app import GatewayRunner, build_app
from gateway.auth import Auth
from gateway.context import GatewayConfig, GatewayContext
from gateway.dispatcher import Dispatcher
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.stream_sign import StreamSigner
from protocols.messages import SESSION
from protocols.wire import Push, Reply

log = logging.getLogger("syncopate.gateway")

# The session heartbeat's ticks a second (`_heartbeats`): each tick covers 1/(interval x this) of
# the gateway's users. At 1 a second, 5,000 users on a 15 s interval came as a burst of 333
# heartbeats and vouches each second, a 10-20 ms stall at the host that the pushes behind it
# waited out; at 10 the same work comes as 33 every 100 ms.
HEARTBEAT_TICKS_PER_S = 10


class GatewayServer:
    def __init__(self, gateway_id: str, make_transport: Callable[[Callable], Any], auth: Auth, catalog: Any,
                 config: GatewayConfig | None = None, events: Any = None,
                 stream_secret: str | None = None, cluster=None, event_bus: Any = None) -> None:
        self.gateway_id = gateway_id
        config = config or GatewayConfig()
        self.hub = Hub(gateway_id, max_sockets_per_user=config.max_sockets_per_user,
                       heartbeat_slots=max(1, round(config.session_heartbeat_s * HEARTBEAT_TICKS_PER_S)))
        self.transport = make_transport(self.receive)
        self.dispatcher = Dispatcher(gateway_id, self.transport, self._route,
                                     on_host_restart=lambda host: self.ctx.subscriptions.host_restarted(host),
                                     on_gap=lambda gap: self.ctx.subscriptions.on_gap(gap), cluster=cluster)
        self.cluster = cluster                  # gateway.cluster_view.ClusterView (membership), or None
        if cluster is not None:
            cluster.on_change = self._view_changed
        # A stream re-opened to the same host process: it forgot our interest with the old stream.
        self.transport.on_reset = self.dispatcher.host_restarted
        self.transport.on_lost = self.dispatcher.host_lost
        self.metrics = GatewayMetrics(gateway_id)
        signer = StreamSigner(stream_secret, config.stream_url_ttl_s) if stream_secret else None
        self.ctx = GatewayContext(gateway_id, self.dispatcher, self.hub, auth, catalog, config,
                                  self.metrics, health=self.health, events=events, signer=signer,
                                  event_bus=event_bus)
        self.dispatcher.on_reply = self.ctx.device_liveness.saw_reply
        self.app = build_app(self.ctx)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.info: dict = {}        # where this gateway runs (node id and IP on Ray), shown by /healthz

    def _route(self, push: Push) -> None:
        self.ctx.note_push(push)
        self.ctx.device_liveness.saw_push(push)
        self.ctx.subscriptions.route(push)

    def receive(self, host: int, incarnation: str, items: list) -> None:
        self.dispatcher.receive(host, incarnation, items)

    def _view_changed(self, before, after) -> None:
        """Membership moved entities: subscriptions of those keys move to their new owner."""
        from actors.membership import route
        n = self.transport.n_hosts
        self.ctx.subscriptions.moved(lambda key: route(key, before, n) != route(key, after, n))

    async def start(self, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False) -> int:
        if self.cluster is not None:
            await self.cluster.start()
        await self.dispatcher.start()
        self._heartbeat = asyncio.create_task(self._heartbeats())
        self._rights = asyncio.create_task(self.ctx.data_rights.watch())   # deleted users; resumes deletions
        self._runner = GatewayRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:                       # several gateway processes share one port (the kernel balances)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.port = sock.getsockname()[1]
        log.info("gateway %s listening on %s:%d", self.gateway_id, host, self.port)
        return self.port

    async def stop(self) -> None:
        self.ctx.streams.close()
        if getattr(self, "_heartbeat", None):
            self._heartbeat.cancel()
        if getattr(self, "_rights", None):
            self._rights.cancel()
        await self.ctx.data_rights.stop()
        for conn in list(self.hub.conns.values()):
            conn.close(1001, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
        await self.dispatcher.stop()
        if self.cluster is not None:
            await self.cluster.close()
        close = getattr(self.transport, "close", None)
        if close is not None:
            await close()

    async def health(self) -> dict:
        async def one(i: int) -> dict:
            try:
                return await asyncio.wait_for(self.transport.stats(i), timeout=1.0)
            except Exception as exc:
                return {"host": i, "ok": False, "error": f"{type(exc).__name__}: {exc}"}

        # every host at once, with a short timeout: one host that is gone must not time health out
        hosts = list(await asyncio.gather(*(one(i) for i in self.dispatcher.hosts())))
        ok = all(bool(st.get("store_ok")) for st in hosts)
        self.metrics.set_host_stats([h for h in hosts if "host_id" in h])
        self.metrics.set_gateway_stats({**self.ctx.subscriptions.stats(), **self.ctx.device_liveness.stats(),
                                        "sockets_refused": self.hub.refused_sockets})
        reachable = [st.get("index", i) for i, st in enumerate(hosts) if "host_id" in st]
        return {"ok": ok, "gateway": self.gateway_id, **self.info, "connections": len(self.hub.conns),
                "reachable_hosts": reachable, "hosts": hosts}

    async def _heartbeats(self) -> None:
        """Tell each user's session entity, once per interval, which of its connections this gateway
        still holds (one command per user, nothing written). Connections it doesn't know (its host
        restarted, or it expired them) are registered again."""
        # Spread over the interval: each tick (HEARTBEAT_TICKS_PER_S a second) covers the users whose
        # hash falls in its slot, so 10,000 users make ~67 commands a tick, not a 10,000-command burst.
        slots = self.hub.heartbeat_slots
        tick = 0
        while True:
            await asyncio.sleep(self.ctx.config.session_heartbeat_s / slots)
            tick = (tick + 1) % slots
            by_user: dict[str, list] = {}
            for uid in self.hub.users_by_slot[tick]:          # this tick's users only (gateway/hub.py)
                conns = [c for c in self.hub.by_user.get(uid, ()) if not c.closed]
                if conns:
                    by_user[uid] = conns
            for uid, conns in by_user.items():
                names = {f"{self.gateway_id}/{c.id}": c for c in conns}

                def done(reply: Reply, names=names, uid=uid):
                    payload = reply.payload
                    if not reply.ok or not isinstance(payload, dict):
                        return
                    for name in payload.get("unknown", ()):
                        c = names.get(name)
                        if c is not None and not c.closed:
                            self.ctx.tell(SESSION, uid, "connect",
                                          {"conn": name, "device_id": c.device_id, "client": c.client,
                                           "gateway": self.gateway_id, "iat": c.principal.issued_at})

                self.dispatcher.request(Command(SESSION, uid, "heartbeat", {"conns": list(names)}), done)
                devices = [c for c in conns if c.registered_device]
                if devices:       # the device group hears these devices are alive (gateway/device_liveness.py)
                    self.ctx.device_liveness.vouch(uid, devices)
