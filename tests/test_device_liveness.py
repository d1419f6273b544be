"""A live device's heartbeat is answered at the gateway (gateway/device_liveness.py), on a real
in-process server (hosts, gateway, websockets) with short device timings.

Every heartbeat the gateway sends on to a host is recorded at the gateway's transport, so "answered
without a host command" is observed, not assumed. No sleeps stand in for synchronisation: waits are
for a frame or a state, with a deadline (the heartbeat loop's pause is the device's own cadence).
"""
from __future__ import annotations

import asyncio
import time

import pytest

from gateway.auth import Auth
from gateway.device_liveness import check_timing, window_ms
from protocols.messages import DEVICE_GROUP
from syncopate.server import ServerSpec
from tests.support.player import Device, WsError
from tests.support.servers import memory_server

TIMEOUT_MS = 2_400        # the device timeout (connect_heartbeat_timeout_ms)
INTERVAL_MS = 400         # what devices are told to send (connect_heartbeat_interval_ms)
VOUCH_S = 0.4             # the gateway's vouch period (session_heartbeat_s): window 1.6 s


class HostCommands:
    """What the gateway sends to its hosts, as sent."""

    def __init__(self, transport) -> None:
        self.cmds: list = []
        send = transport.send

        def recording(host, requests):
            self.cmds.extend(cmd for _, cmd in requests)
            return send(host, requests)
        transport.send = recording

    def heartbeats(self, uid: str) -> list:
        """The device heartbeats (not the gateway's vouches) sent for `uid`'s group."""
        return [c for c in self.cmds if c.kind == DEVICE_GROUP and c.entity_id == uid and c.op == "heartbeat"
                and "conns" not in c.args]


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    limits = {"connect_heartbeat_timeout_ms": TIMEOUT_MS, "connect_heartbeat_interval_ms": INTERVAL_MS}
    gateway = {"rest_rate": 1000, "rest_burst": 1000, "ws_rate": 1000, "ws_burst": 1000, "session_heartbeat_s": VOUCH_S}
    async with memory_server(tmp_path_factory, "liveness", hosts=2, gateway=gateway, limits=limits) as srv:
        srv.host_commands = HostCommands(srv.gateway.transport)
        yield srv


async def device(srv, http, uid: str, did: str) -> Device:
    d = await Device(http, srv.url, Auth(srv.secret).mint(uid), did, name=did.title(), type="computer").connect()
    await d.register()
    return d


def online(c: dict, did: str) -> bool:
    return any(x["id"] == did and x["is_online"] for x in c["devices"])


async def heartbeat(d: Device, did: str | None = None) -> dict:
    f = await d.request("device.heartbeat", {"device_id": did or d.device_id})
    if f["type"] != "result":
        raise WsError(f)
    return f


async def local_heartbeat(srv, d: Device, uid: str, deadline_s: float = 10.0) -> dict:
    """A heartbeat the gateway answers itself: the first after the host confirmed the device (its
    register answer, or the next vouch if the register took longer than the window)."""
    liveness, host = srv.gateway.ctx.device_liveness, srv.host_commands
    end = time.monotonic() + deadline_s
    while True:
        sent, answered = len(host.heartbeats(uid)), liveness.answered
        f = await heartbeat(d)
        if liveness.answered == answered + 1 and len(host.heartbeats(uid)) == sent:
            return f
        assert time.monotonic() < end, "no heartbeat was answered at the gateway"
        await asyncio.sleep(INTERVAL_MS / 1000)        # the device's heartbeat cadence


async def test_a_live_devices_heartbeat_is_answered_without_a_host_command(server, http, unique):
    a = await device(server, http, unique, "laptop")
    try:
        before_ms = int(time.time() * 1000)
        f = await local_heartbeat(server, a, unique)
        after_ms = int(time.time() * 1000)
        # what the host would answer: the group's revision as the device has it, the server clock
        assert f["payload"]["revision"] == a.revision
        assert before_ms <= f["payload"]["server_time_ms"] <= after_ms
        pushed = [o["version"] for o in a.other if o["version"] is not None]
        assert f["version"] >= max(pushed, default=0)          # the group's version, not older
        # and so on, every heartbeat: none reaches the host
        sent = len(server.host_commands.heartbeats(unique))
        for _ in range(5):
            assert (await heartbeat(a))["payload"]["revision"] == a.revision
        assert len(server.host_commands.heartbeats(unique)) == sent
    finally:
        await a.close()


async def test_a_device_the_host_marked_offline_is_revived_by_its_heartbeat(server, http, unique):
    a = await device(server, http, unique, "laptop")
    b = await device(server, http, unique, "phone")
    try:
        await local_heartbeat(server, a, unique)
        # the host takes `laptop` offline while its socket lives (as a missed timeout would)
        await server.gateway.ctx.call(DEVICE_GROUP, unique, "disconnect", {"device_id": "laptop"})
        down = await a.wait_state(lambda c: not online(c, "laptop"))
        sent = len(server.host_commands.heartbeats(unique))
        f = await heartbeat(a)
        # the heartbeat went to the host, which brought the device back, as it always did
        assert [c.args["device_id"] for c in server.host_commands.heartbeats(unique)[sent:]] == ["laptop"]
        up = await b.wait_state(lambda c: c["revision"] > down["revision"] and online(c, "laptop"))
        assert up["reason"] == "device_state_changed"
        assert f["payload"]["revision"] == up["revision"]
        # and once the host counts it online on this connection again, the gateway answers
        await local_heartbeat(server, a, unique)
    finally:
        await a.close()
        await b.close()


async def test_a_heartbeat_for_another_connections_device_goes_to_the_host(server, http, unique):
    a = await device(server, http, unique, "laptop")
    b = await device(server, http, unique, "phone")
    try:
        await local_heartbeat(server, a, unique)
        await local_heartbeat(server, b, unique)
        sent = len(server.host_commands.heartbeats(unique))
        f = await heartbeat(a, "phone")                  # b's device, from a's socket: the host answers
        assert f["payload"]["revision"] == a.revision
        with pytest.raises(WsError) as err:
            await heartbeat(a, "toaster")                # not a device of this user
        assert err.value.code == "NOT_FOUND"
        assert [c.args["device_id"] for c in server.host_commands.heartbeats(unique)[sent:]] == ["phone", "toaster"]
        # a socket that registered nothing: its heartbeats go to the host too
        c = await Device(http, server.url, Auth(server.secret).mint(unique), "tv").connect()
        try:
            await heartbeat(c, "laptop")
            assert server.host_commands.heartbeats(unique)[-1].args["device_id"] == "laptop"
        finally:
            await c.close()
    finally:
        await a.close()
        await b.close()


async def test_a_device_stays_online_across_device_timeouts_on_gateway_answers_alone(server, http, unique):
    a = await device(server, http, unique, "laptop")
    try:
        await local_heartbeat(server, a, unique)
        sent = len(server.host_commands.heartbeats(unique))
        pushes = len(a.pushes)
        end = time.monotonic() + 3.5 * TIMEOUT_MS / 1000
        beats = 0
        while time.monotonic() < end:
            await heartbeat(a)
            beats += 1
            await asyncio.sleep(INTERVAL_MS / 1000)     # the device's heartbeat cadence
        assert beats >= 3.5 * TIMEOUT_MS / INTERVAL_MS / 2
        assert len(server.host_commands.heartbeats(unique)) == sent, "a heartbeat reached the host"
        assert all(online(c, "laptop") for c in a.pushes[pushes:]), "the device went offline meanwhile"
        devices = await a.call("player.devices", {})      # the host's own view
        assert [d["id"] for d in devices["devices"]] == ["laptop"]
    finally:
        await a.close()


def test_the_vouch_period_must_fit_the_device_window():
    assert window_ms(10_000, 30_000) == 18_000
    ServerSpec()                                          # 15 s vouches, 30 s timeout: fine
    with pytest.raises(ValueError, match="session_heartbeat_s"):
        ServerSpec(gateway={"session_heartbeat_s": 20})
    with pytest.raises(ValueError, match="session_heartbeat_s"):
        ServerSpec(limits={"connect_heartbeat_timeout_ms": 20_000})
    check_timing(VOUCH_S, {"connect_heartbeat_timeout_ms": TIMEOUT_MS, "connect_heartbeat_interval_ms": INTERVAL_MS})


# -- the rules, one at a time (DeviceLiveness with a fake clock, dispatcher and subscriptions) ------

class _Conn:
    def __init__(self, cid: str, did: str | None) -> None:
        from actors.entity import Principal
        self.id, self.registered_device, self.closed = cid, did, False
        self.principal = Principal("u1")
        self.sent: list = []

    def send(self, msg) -> None:
        self.sent.append(msg)


class _Fakes:
    def __init__(self) -> None:
        from gateway.device_liveness import DeviceLiveness
        self.now = 100.0
        self.requests: list = []
        self.resyncing: set = set()
        fakes = self

        class Dispatcher:
            def request(self, cmd, callback):
                fakes.requests.append((cmd, callback))

        class Subs:
            def in_sync(self, conn, key):
                return conn.id not in fakes.resyncing

        self.lv = DeviceLiveness("g0", Dispatcher(), Subs(), clock=lambda: self.now)
        self.conn = _Conn("c1", "laptop")

    def vouch(self, reply):
        self.lv.vouch("u1", [self.conn])
        cmd, callback = self.requests.pop()
        assert cmd.op == "heartbeat" and cmd.args == {"conns": ["g0/c1"]}
        callback(reply)
        self.lv.saw_reply(cmd, reply, self.now)          # as the dispatcher: the observer after the callback

    def beat(self) -> bool:
        return self.lv.answer(self.conn, 7, {"device_id": "laptop"})


def _confirmed(devices=("laptop",), revision=5):
    from protocols.wire import Reply
    return Reply(9, {"devices": list(devices), "conns": ["g0/c1"] * len(devices), "revision": revision,
                     "server_time_ms": 0, "heartbeat_interval_ms": INTERVAL_MS, "heartbeat_timeout_ms": TIMEOUT_MS})


def test_a_confirmed_vouch_answers_until_its_window_lapses():
    f = _Fakes()
    assert not f.beat()                                   # nothing known: the host answers
    f.vouch(_confirmed())
    assert f.beat() and f.conn.sent[-1]["payload"]["revision"] == 5 and f.conn.sent[-1]["version"] == 9
    f.now += window_ms(INTERVAL_MS, TIMEOUT_MS) / 1000 - 0.01
    assert f.beat()
    f.now += 0.02                                         # no vouch confirmed it since: the host hears it
    assert not f.beat()


def test_a_failed_vouch_or_an_offline_push_withdraws_and_a_resync_forwards():
    from protocols.errors import ErrorCode, SyncopateError
    from protocols.wire import Push, Reply
    f = _Fakes()
    f.vouch(_confirmed())
    f.vouch(Reply.fail(SyncopateError(ErrorCode.TIMEOUT, "no answer")))
    assert not f.beat()
    f.vouch(_confirmed())
    f.vouch(_confirmed(devices=()))                        # the host no longer counts it online here
    assert not f.beat()
    f.vouch(_confirmed())
    f.resyncing.add("c1")                                  # pushes may be missing: ask the host
    assert not f.beat()
    f.resyncing.clear()
    f.lv.saw_push(Push("devicegroup:u1", 10, "player.changed",
                       {"revision": 6, "player": {}, "devices": [{"id": "laptop", "online": False}]}))
    assert not f.beat()
    f.vouch(_confirmed(revision=6))
    f.lv.saw_push(Push("devicegroup:u1", 11, "player.changed",
                       {"revision": 7, "player": {}, "devices": [{"id": "laptop", "online": True}]}))
    assert f.beat() and f.conn.sent[-1]["payload"]["revision"] == 7 and f.conn.sent[-1]["version"] == 11
    f.conn.registered_device = "phone"                     # re-registered as another device: not this one's
    assert not f.beat()
