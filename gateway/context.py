"""GatewayContext: what REST handlers and the websocket handler use to reach the cluster."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from actors.entity import SYSTEM, Command, Principal
from gateway import presenters
from gateway.auth import Auth
from gateway.device_liveness import DeviceLiveness
from gateway.dispatcher import Dispatcher
from gateway.hub import Connection, Hub
from gateway.markets import UserMarkets
from gateway.stream_sign import StreamSigner
from gateway.streams import StreamManifests
from gateway.metrics import GatewayMetrics
from gateway.subscriptions import Subscriptions
from protocols import messages as m
from protocols.errors import ErrorCode, SyncopateError
from protocols.limits import MAX_FRAME_BYTES
from protocols.wire import Push, Reply

log = logging.getLogger("syncopate.gateway")
MAX_TOKEN_TTL_S = 30 * 86400     # gateway/auth.py refuses tokens that live longer


@dataclass
class GatewayConfig:
    max_frame_bytes: int = MAX_FRAME_BYTES   # one client frame; the playlist entity takes updates as large
    ws_rate: float = 200.0               # frames per second per connection (sustained)
    ws_burst: float = 400.0
    rest_rate: float = 100.0             # requests per second per user (sustained)
    rest_burst: float = 200.0
    heartbeat_s: float = 20.0            # websocket ping interval; a dead peer is dropped after ~2x
    # connections reported to the session entity (which expires at 45 s), and devices vouched for to
    # their device group: at most the device window (gateway/device_liveness.py check_timing)
    session_heartbeat_s: float = 15.0
    max_queued_bytes: int = 16 << 20     # outbound bytes queued per socket before it is closed (4008)
    max_sockets_per_user: int = 50       # open websockets (app + Yjs) per user on one gateway (HTTP 429 beyond)
    max_inflight_per_socket: int = 256   # requests awaiting their answer per app socket (RATE_LIMITED beyond)
    max_inflight_subscribes_per_socket: int = 4   # a full answer of a 10,000-entry playlist is ~1.5 MB
    stream_url_ttl_s: int = 300          # life of a signed stream URL (refreshed at 80%, gateway/streams.py)
    extra: dict = field(default_factory=dict)


class GatewayContext:
    def __init__(self, gateway_id: str, dispatcher: Dispatcher, hub: Hub, auth: Auth, catalog: Any,
                 config: GatewayConfig, metrics: GatewayMetrics, health: Callable[[], Any] | None = None,
                 events: Any = None, signer: StreamSigner | None = None, event_bus: Any = None) -> None:
        self.gateway_id = gateway_id
        # the event pipeline's counts store (syncopate/events/counts.py): recently played, stream counts
        self.events = events
        # and its bus (syncopate/events/bus.py): a user's erasure removes their entries (data_rights.py)
        self.event_bus = event_bus
        self.dispatcher = dispatcher
        self.hub = hub
        self.auth = auth
        self.catalog = catalog
        self.config = config
        self.metrics = metrics
        self.health = health
        self.host_control = None          # queues a `hosts add|remove` request for the driver (Ray gateway)
        # the device group's domain values as the websocket has always carried them (gateway/presenters.py)
        self.ws_replies = presenters.ws_replies(catalog)
        self.signer = signer                     # stream URLs (gateway/stream_sign.py); None: no manifests
        self.streams = StreamManifests(self)
        self.subscriptions = Subscriptions(gateway_id, hub, dispatcher, pushes=presenters.ws_pushes(catalog),
                                           states=presenters.ws_states(catalog),
                                           personal={m.MessageType.PLAYER_CHANGED.value: self.streams.personal},
                                           personal_states={m.DEVICE_GROUP: self.streams.personal})
        # a live device's heartbeat answered here, from what the hosts said (gateway/device_liveness.py)
        self.device_liveness = DeviceLiveness(gateway_id, dispatcher, self.subscriptions)
        self.revoked: dict[tuple[str, str], int] = {}     # (user, device) -> signed out at (ms)
        self.yjs_awareness: dict = {}    # playlist key -> gateway/yjs.AwarenessCache of its Yjs clients
        from gateway.data_rights import DataRights
        self.data_rights = DataRights(self)   # export, deletion, refusing deleted users' tokens
        # the user's country for REST `market=from_token` and the edge (gateway/markets.py); playback
        # commands carry none: the device group holds its market (actors/devicegroup_market.py)
        self.markets = UserMarkets(self)

    def new_connection(self, principal: Principal, **kw) -> Connection:
        conn = Connection(self.hub.new_id(), principal, max_queued_bytes=self.config.max_queued_bytes,
                          on_overflow=self._overflowed, **kw)
        self.hub.add(conn)
        return conn

    def _overflowed(self, conn: Connection) -> None:
        self.metrics.budget_refused.labels("outbound_bytes").inc()

    # -- device-bound tokens ----------------------------------------------------------------------
    def note_push(self, push: Push) -> None:
        """Watch the pushes this gateway routes for sign-outs, so later requests are refused at once,
        and for product changes, which every local socket of the user takes at once (live
        authorization: a downgraded user's premium socket is free from this push on)."""
        if push.type == m.MessageType.SESSION_CHANGED.value and isinstance(push.payload, dict) \
                and push.payload.get("reason") == "product" and push.payload.get("product") in ("premium", "free"):
            uid = push.key.partition(":")[2]
            for conn in self.hub.user_conns(uid):
                conn.principal = dataclasses.replace(conn.principal, product=push.payload["product"])
            return
        if push.type == m.MessageType.SESSION_CHANGED.value and isinstance(push.payload, dict) \
                and push.payload.get("reason") == "account_deleted":
            self.data_rights.account_deleted(push.key.partition(":")[2])
            return
        if push.type == m.MessageType.SESSION_CHANGED.value and isinstance(push.payload, dict) \
                and push.payload.get("reason") == "signed_out" and push.payload.get("device_id"):
            uid = push.key.partition(":")[2]
            now = int(time.time() * 1000)
            self.revoked[(uid, push.payload["device_id"])] = now
            if len(self.revoked) > 1024:
                # A sign-out older than the longest token lifetime can match no valid token: forget it
                # (the set grew with every sign-out, for ever).
                horizon = now - MAX_TOKEN_TTL_S * 1000
                self.revoked = {k: at for k, at in self.revoked.items() if at >= horizon}

    async def check_session(self, principal: Principal) -> None:
        """Refuse a device-bound token whose device was signed out (SESSION_ENDED).

        While this gateway follows the user's session entity (a local connection subscribes to it)
        it sees every sign-out as a push and answers from memory; otherwise it asks the entity.
        Tokens without a device id can't be signed out one device at a time; they expire. Every
        token of a deleted user is refused (gateway/data_rights.py)."""
        self.data_rights.check(principal)
        dev = principal.device_id
        if not dev:
            return
        uid = principal.user_id
        at = self.revoked.get((uid, dev))
        if at is not None and principal.issued_at * 1000 <= at:
            raise SyncopateError(ErrorCode.SESSION_ENDED, "this device was signed out")
        if self.subscriptions.has_members(f"{m.SESSION}:{uid}"):
            return
        reply = await self.call(m.SESSION, uid, "check_device", {"device_id": dev, "iat": principal.issued_at})
        if reply.get("revoked"):
            raise SyncopateError(ErrorCode.SESSION_ENDED, "this device was signed out")

    # -- calls into the cluster ---------------------------------------------------------------
    def request(self, cmd: Command, callback) -> None:
        """Fast path: no preparation needed, answer through `callback(reply)`."""
        self.metrics.host_call(cmd.kind)
        self.dispatcher.request(cmd, callback)

    async def call(self, kind: str, entity_id: str, op: str, args: dict | None = None, *,
                   principal: Principal = SYSTEM, op_id: str | None = None,
                   origin: tuple[str, str] | None = None) -> Any:
        reply, _ = await self.call_versioned(Command(kind, entity_id, op, dict(args or {}), principal,
                                                     op_id=op_id, origin=origin))
        return reply

    async def call_versioned(self, cmd: Command) -> tuple[Any, int]:
        # Nothing is read for the command here: a playlist play context and the user's market are
        # the device group's host's asks (actors/asks.py), as the commanding user.
        self.metrics.host_call(cmd.kind)
        return await self.dispatcher.call(cmd)

    async def catalog_changed(self) -> int:
        """After a catalog reload (docs/rights.md "Takedowns"): tell the device group of every user
        with a device registered on this gateway (a group that plays has one: a device that goes
        silent goes offline and pauses), so a track taken down stops or is skipped at once. Each
        gateway tells its own; the op is idempotent. Answers how many groups were told."""
        users = sorted({c.principal.user_id for c in self.hub.conns.values() if c.registered_device})

        async def one(uid: str) -> None:
            try:
                await self.call(m.DEVICE_GROUP, uid, "catalog_changed", {})
            except SyncopateError as err:
                log.warning("catalog_changed for %s failed: %s", uid, err)
        # all at once: the groups are independent, and one slow host must not hold the others up
        await asyncio.gather(*(one(u) for u in users))
        return len(users)

    def tell(self, kind: str, entity_id: str, op: str, args: dict, origin: tuple[str, str] | None = None) -> None:
        """System notice to an entity (connection closed, ...); failures are logged, not raised."""
        def done(reply: Reply):
            if not reply.ok:
                log.debug("notice %s.%s failed: %s", kind, op, reply.error)
        self.dispatcher.request(Command(kind, entity_id, op, args, SYSTEM, origin=origin), done)
