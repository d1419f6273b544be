"""The device group's device ops: registration, heartbeats, a device's own state, disconnects
(docs/connect.md "Ops"). A mixin of DeviceGroupEntity (actors/devicegroup.py)."""
from __future__ import annotations

from actors.args import Args, Bool, Int, Str, address
from actors.devicegroup_txn import (
    DEVICE_STATE_CHANGED,
    MAX_DEVICES,
    NEW_DEVICE,
    VOLUME_CHANGED,
    _err,
    _Txn,
)
from actors.entity import Command, Outcome, op
from protocols.errors import ErrorCode
from protocols.wire import ConnAddress


class DeviceOps:
    # == device ops =================================================================================
    @op("register", role="user", args={"device_id": Str(required=True), "name": Str(),
                                       "type": Str(max_len=32), "volume_percent": Int(lo=0, hi=100),
                                       "supports_volume": Bool(), "is_restricted": Bool()})
    def _op_register(self, cmd: Command, a: Args) -> Outcome:
        did, name, dtype, vol = a["device_id"], a["name"], a["type"], a["volume_percent"]
        sv, restricted = a["supports_volume"], a["is_restricted"]
        t = _Txn(self, cmd.now_ms)
        old = t.dev(did)
        conn = ConnAddress.parse(cmd.origin) if cmd.origin is not None else None
        if old is None:
            if len(self.devices) >= MAX_DEVICES:
                raise _err(ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_DEVICES} devices per user")
            d = {"id": did, "name": name or did, "type": dtype or "unknown",
                 "volume_percent": 100 if vol is None else vol,
                 "supports_volume": True if sv is None else sv,
                 "is_restricted": False if restricted is None else restricted,
                 "online": True, "off_since": None, "conn": conn}
            t.set_reason(NEW_DEVICE)
        else:
            d = dict(old)
            for k, v in (("name", name), ("type", dtype), ("volume_percent", vol),
                         ("supports_volume", sv), ("is_restricted", restricted)):
                if v is not None:
                    d[k] = v
            t.set_reason(NEW_DEVICE if not old["online"] else DEVICE_STATE_CHANGED)
            d.update(online=True, off_since=None, conn=conn)
        t.devs[did] = d
        self._settle(t)
        self._pick_up(t, did)
        out = self._commit(t, reply_cluster=True)
        self._seen[did] = cmd.now_ms
        return out

    @staticmethod
    def _pick_up(t: _Txn, did: str) -> None:
        """The device that was active when it dropped off comes back: it is the active device again
        (paused where it was), unless another device took over meanwhile."""
        if t.active is None and t.last_active == did and t.p["uri"] is not None:
            t.active = did
            t.fenced = True

    @op("heartbeat", role="user")
    def _op_heartbeat(self, cmd: Command, a: Args) -> Outcome:
        conns = a.get("conns")
        if conns is not None and cmd.principal.system:
            # the gateway vouches for every live connection of this user on it (one command)
            if not isinstance(conns, list):
                raise _err(ErrorCode.INVALID_FIELD, "conns must be a list of \"gateway/connection\"")
            live = {c for c in map(address, conns) if c is not None}
            seen = [did for did, d in self.devices.items() if d["online"] and d["conn"] in live]
            for did in seen:
                self._seen[did] = cmd.now_ms
            # `conns[i]` is the connection `devices[i]` is online on, and the timings say how long
            # this vouch keeps them online: the gateway answers their own heartbeats meanwhile
            # (gateway/device_liveness.py)
            return Outcome(reply={"devices": seen, "conns": [str(self.devices[did]["conn"]) for did in seen],
                                  "revision": self.revision, "server_time_ms": cmd.now_ms,
                                  "heartbeat_interval_ms": self.heartbeat_interval_ms,
                                  "heartbeat_timeout_ms": self.heartbeat_timeout_ms})
        did = Str(required=True).parse(a, "device_id")
        d = self.devices.get(did)
        if d is None:
            raise _err(ErrorCode.NOT_FOUND, f"device not found: {did} (register again)")
        if d["online"]:
            self._seen[did] = cmd.now_ms
            return Outcome(reply={"revision": self.revision, "server_time_ms": cmd.now_ms})
        t = _Txn(self, cmd.now_ms)             # an offline device is heard from again: revive it
        e = t.edit(did)
        e.update(online=True, off_since=None)
        if cmd.origin is not None:
            e["conn"] = ConnAddress.parse(cmd.origin)
        t.set_reason(DEVICE_STATE_CHANGED)
        self._settle(t)
        self._pick_up(t, did)
        out = self._commit(t)
        self._seen[did] = cmd.now_ms
        out.reply = {"revision": self.revision, "server_time_ms": cmd.now_ms}
        return out

    @op("update_device", role="user", fenced=True,
        args={"device_id": Str(required=True), "volume_percent": Int(lo=0, hi=100), "name": Str()})
    def _op_update_device(self, cmd: Command, a: Args) -> Outcome:
        did, vol, name = a["device_id"], a["volume_percent"], a["name"]
        if vol is None and name is None:
            raise _err(ErrorCode.INVALID_FIELD, "nothing to update: give volume_percent or name")
        t = _Txn(self, cmd.now_ms)
        d = t.dev(did)
        if d is None:
            raise _err(ErrorCode.NOT_FOUND, f"device not found: {did}")
        if vol is not None and not d["supports_volume"]:
            raise _err(ErrorCode.VOLUME_CONTROL_DISALLOW, f"device {did} has no volume control")
        e = t.edit(did)
        if vol is not None:
            e["volume_percent"] = vol
        if name is not None:
            e["name"] = name
        t.set_reason(VOLUME_CHANGED if vol is not None and vol != d["volume_percent"] else DEVICE_STATE_CHANGED)
        self._settle(t)
        out = self._commit(t)
        if d["online"]:
            self._seen[did] = cmd.now_ms
        return out

    @op("disconnect", system=True)
    def _op_disconnect(self, cmd: Command, a: Args) -> Outcome:
        """Gateway notice: a websocket closed. {device_id?, conn?: "gateway/connection"} (or the
        command's origin). A notice about a connection the device no longer uses is ignored."""
        did = a.get("device_id")
        conn = address(a.get("conn", a.get("connection")))
        if conn is None and cmd.origin is not None:
            conn = ConnAddress.parse(cmd.origin)
        if did is not None:
            if not isinstance(did, str):
                raise _err(ErrorCode.INVALID_FIELD, "device_id must be a string")
            d = self.devices.get(did)
            if d is None or not d["online"]:
                return Outcome()
            if conn is not None and d["conn"] is not None and conn != d["conn"]:
                return Outcome()            # the device already reconnected on another connection
            targets = [did]
        else:
            if conn is None:
                raise _err(ErrorCode.INVALID_FIELD, "device_id or the connection is required")
            targets = [i for i, d in self.devices.items() if d["online"] and d["conn"] == conn]
            if not targets:
                return Outcome()
        t = _Txn(self, cmd.now_ms)
        self._settle(t)
        for i in targets:
            self._go_offline(t, i)
        t.set_reason(DEVICE_STATE_CHANGED)
        return self._commit(t)
