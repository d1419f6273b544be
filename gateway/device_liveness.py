"""A live device's heartbeat, answered at the gateway (docs/connect.md "Heartbeats at the gateway").

Every `session_heartbeat_s` the gateway vouches, per user, for the devices registered on its live
connections: one system `heartbeat {conns}` to the user's device group (`vouch`, a request). The
host refreshes those devices' liveness and answers which of them it counts online and on which
connection. While that answer stands, a device's own `device.heartbeat` on that connection would
change nothing at the host (the vouch already keeps it alive) and its answer, `{revision,
server_time_ms}`, is known here: so the gateway answers it itself (`answer`), and the host does
one command per user per vouch instead of one per device per heartbeat.

The gateway answers only when that answer can't be told from the host's being current:

* the device id is the one registered on this very connection;
* the host counted it online on this connection in a vouch (or the register) sent less than
  `window` ago: timeout - interval - min(interval, 2 s), so that if vouching stops (a stalled
  loop, a lost answer) the device's next heartbeat, forwarded, still reaches the host before it
  times the device out;
* nothing seen since says otherwise: a push or an answer whose device list shows the device
  offline (or gone) withdraws it; a failed vouch withdraws all it named;
* the connection follows the group in sync (no resync under way), so every push of the group
  reaches this gateway, in the host's order, before the next reply;
* the revision and version answered are the highest this gateway has seen for the group
  (pushes and every reply from the host), so never older than any delivered on the connection.

Otherwise (offline at the host, unknown, another connection's device id) the heartbeat goes to
the host exactly as before, and an offline device is revived there. `server_time_ms` is the
gateway's clock, as `pong`'s is.

`check_timing` is the invariant the vouch period must keep (checked when a server spec loads).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from actors.devicegroup_txn import HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS, PLAYER_CHANGED
from actors.entity import SYSTEM, Command
from protocols import codec
from protocols.messages import DEVICE_GROUP
from protocols.wire import ConnAddress, Push, Reply

LATENCY_SPARE_MS = 2_000     # at most this of the interval is kept for a forwarded heartbeat's trip
GROUP_PREFIX = f"{DEVICE_GROUP}:"


def window_ms(interval_ms: int, timeout_ms: int) -> int:
    """How long a vouch the host confirmed lets the gateway answer a device's heartbeats: the
    device's next heartbeat after it still reaches the host before the timeout, with
    min(interval, 2 s) to spare. <= 0: never."""
    return timeout_ms - interval_ms - min(interval_ms, LATENCY_SPARE_MS)


def check_timing(session_heartbeat_s: float, limits: dict) -> None:
    """The vouch period must fit in the window, so a confirmed vouch is renewed before it lapses
    (and so, being under the timeout, keeps every live device online by itself). ValueError if not."""
    interval = int(limits.get("connect_heartbeat_interval_ms", HEARTBEAT_INTERVAL_MS))
    timeout = int(limits.get("connect_heartbeat_timeout_ms", HEARTBEAT_TIMEOUT_MS))
    if interval <= 0 or timeout <= 0:
        raise ValueError("connect_heartbeat_interval_ms and connect_heartbeat_timeout_ms must be positive")
    win = window_ms(interval, timeout)
    if session_heartbeat_s * 1000 > win:
        raise ValueError(
            f"gateway session_heartbeat_s ({session_heartbeat_s:g} s) must be at most the device timeout "
            f"minus the heartbeat interval minus min(interval, 2 s) ({win / 1000:g} s with "
            f"connect_heartbeat_timeout_ms={timeout}, connect_heartbeat_interval_ms={interval}): the gateway's "
            f"vouch keeps live devices online and answers their heartbeats")


@dataclass(slots=True)
class _Vouched:
    device_id: str
    sent: float               # monotonic: when the command the host confirmed it by was sent


@dataclass(slots=True)
class _Group:
    """What this gateway knows of one user's device group."""
    revision: int = -1        # the highest seen in pushes and replies (-1: none yet)
    version: int = -1
    window_s: float = 0.0     # from the host's timings (0: not known yet: never answer)
    online: dict[str, _Vouched] = field(default_factory=dict)     # connection id -> its device

    def saw(self, version: int, cluster: Any) -> None:
        if version > self.version:
            self.version = version
        if not isinstance(cluster, dict):
            return
        rev = cluster.get("revision")
        if isinstance(rev, int) and rev > self.revision:
            self.revision = rev
        devices = cluster.get("devices")
        # the whole group (a push, a register or subscribe answer) lists every device with its state;
        # other answers name devices in other senses (the vouch's, `devices`' online-only list)
        if isinstance(devices, list) and "player" in cluster and self.online:
            up = {d.get("id") for d in devices if isinstance(d, dict) and d.get("online")}
            for cid in [c for c, v in self.online.items() if v.device_id not in up]:
                del self.online[cid]

    def timings(self, payload: dict) -> None:
        iv, to = payload.get("heartbeat_interval_ms"), payload.get("heartbeat_timeout_ms")
        if isinstance(iv, int) and isinstance(to, int):
            self.window_s = max(0, window_ms(iv, to)) / 1000


class DeviceLiveness:
    def __init__(self, gateway_id: str, dispatcher, subscriptions, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.gateway_id = gateway_id
        self.dispatcher = dispatcher
        self.subscriptions = subscriptions
        self.clock, self.wall = clock, wall
        self._groups: dict[str, _Group] = {}       # user id -> its group (while a device is vouched for)
        self.answered = 0                           # heartbeats answered here
        self.forwarded = 0                          # heartbeats sent on to the host

    # -- the device's heartbeat ------------------------------------------------------------------
    def answer(self, conn, rid: Any, payload: dict) -> bool:
        """Answer `device.heartbeat` here if the host's answer is known (True); False: send it on."""
        did = payload.get("device_id")
        uid = conn.principal.user_id
        g = self._groups.get(uid)
        v = g.online.get(conn.id) if g is not None else None
        if v is None or did != v.device_id or did != conn.registered_device or g.revision < 0:
            self.forwarded += 1
            return False
        if self.clock() - v.sent >= g.window_s:
            del g.online[conn.id]                   # not confirmed in time: the host hears it itself
            self.forwarded += 1
            return False
        if not self.subscriptions.in_sync(conn, GROUP_PREFIX + uid):
            self.forwarded += 1
            return False
        self.answered += 1
        conn.send(codec.result(rid, {"revision": g.revision, "server_time_ms": int(self.wall() * 1000)}, g.version))
        return True

    # -- the vouch ---------------------------------------------------------------------------------
    def vouch(self, uid: str, conns: list) -> None:
        """Vouch for the devices registered on `conns` (this user's live connections here)."""
        names = {f"{self.gateway_id}/{c.id}": c for c in conns}
        sent = self.clock()
        # The answer comes on the host's ordered stream: every push the host made before handling
        # the vouch was routed (and seen by `saw_push`) before `done` runs.
        self.dispatcher.request(Command(DEVICE_GROUP, uid, "heartbeat", {"conns": list(names)}, SYSTEM),
                                lambda reply: self._vouched(uid, names, sent, reply))

    def _vouched(self, uid: str, names: dict, sent: float, reply: Reply) -> None:
        payload = reply.payload
        g = self._groups.get(uid)
        if not reply.ok or not isinstance(payload, dict):
            if g is not None:                       # the host may not have heard: it hears the devices
                for c in names.values():
                    g.online.pop(c.id, None)
                self._tidy(uid, g)
            return
        if g is None:
            g = self._groups[uid] = _Group()
        g.timings(payload)
        g.saw(reply.version, payload)
        pairs = dict(zip(payload.get("conns") or (), payload.get("devices") or ()))
        for name, c in names.items():
            did = pairs.get(name)
            if did is not None and not c.closed and did == c.registered_device:
                g.online[c.id] = _Vouched(did, sent)
            else:
                g.online.pop(c.id, None)
        self._tidy(uid, g)

    # -- what the hosts say (every reply and push of a device group) --------------------------------
    def saw_reply(self, cmd: Command, reply: Reply, sent: float) -> None:
        """A host's reply to `cmd` (sent at `sent`), just after its callback ran (gateway/dispatcher.py)."""
        if cmd.kind != DEVICE_GROUP:
            return
        g = self._groups.get(cmd.entity_id)
        if not reply.ok:
            if g is not None and cmd.op == "heartbeat" and isinstance(cmd.origin, ConnAddress):
                g.online.pop(cmd.origin.conn, None)      # e.g. NOT_FOUND: the host no longer has it
            return
        if cmd.op == "register" and isinstance(cmd.origin, ConnAddress) and cmd.origin.gateway == self.gateway_id \
                and isinstance(reply.payload, dict) and isinstance(cmd.args.get("device_id"), str):
            # the host put the device online on this connection, with a full timeout from now
            if g is None:
                g = self._groups[cmd.entity_id] = _Group()
            g.timings(reply.payload)
            g.online[cmd.origin.conn] = _Vouched(cmd.args["device_id"], sent)
        if g is not None:
            g.saw(reply.version, reply.payload)

    def saw_push(self, push: Push) -> None:
        if not self._groups or not push.key.startswith(GROUP_PREFIX):
            return
        g = self._groups.get(push.key[len(GROUP_PREFIX):])
        if g is not None:
            g.saw(push.version, push.payload if push.type == PLAYER_CHANGED else None)

    def forget(self, conn) -> None:
        """The connection closed."""
        uid = conn.principal.user_id
        g = self._groups.get(uid)
        if g is not None:
            g.online.pop(conn.id, None)
            self._tidy(uid, g)

    def _tidy(self, uid: str, g: _Group) -> None:
        # A group is kept while a device is vouched for: created again, its first vouch or register
        # answer is current (the host's stream is ordered), so nothing older is ever answered.
        if not g.online:
            self._groups.pop(uid, None)

    def stats(self) -> dict:
        return {"heartbeats_answered": self.answered, "heartbeats_forwarded": self.forwarded,
                "vouched_groups": len(self._groups)}
