"""gateway/subscriptions.py on its own: membership, watermarks, gaps, resync, the leave/join race,
connection-addressed pushes. A fake dispatcher records the commands and answers them by hand."""
import asyncio

import pytest

from actors.entity import Principal
from gateway.hub import Connection, Hub
from gateway.subscriptions import Subscriptions
from protocols import codec
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import ConnAddress, Gap, Push, Reply


class FakeDispatcher:
    def __init__(self):
        self.sent = []                       # (cmd, callback)

    def request(self, cmd, callback):
        self.sent.append((cmd, callback))

    def host_of(self, key):
        return 0

    def take(self, op=None):
        out = [(c, cb) for c, cb in self.sent if op is None or c.op == op]
        self.sent = [(c, cb) for c, cb in self.sent if not (op is None or c.op == op)]
        return out


def conn(hub, user="alice"):
    frames = []

    async def send_raw(f):
        frames.append(f)

    async def close(code, reason):
        frames.append(("closed", code))

    c = Connection(hub.new_id(), Principal(user), encoding=codec.JSON, client="t", device_id=None,
                   send_raw=send_raw, close=close)
    c.frames = frames
    hub.add(c)
    return c


def sent_types(c):
    return [__import__("orjson").loads(f)["type"] for f in c.frames if isinstance(f, str)]


@pytest.fixture
def setup():
    hub = Hub("gw")
    d = FakeDispatcher()
    return hub, d, Subscriptions("gw", hub, d)


async def settle(c):
    await c.flush()


async def test_member_gets_next_version_and_a_gap_resubscribes_from_its_watermark(setup):
    hub, d, subs = setup
    a = conn(hub)
    subs.subscribe(a, "playlist:p")
    (cmd, cb), = d.take("subscribe")
    assert cmd.origin == ConnAddress("gw", a.id)
    cb(Reply(5, {"state": 1}))
    assert subs.watermark(a, "playlist:p") == 5
    subs.route(Push("playlist:p", 6, "playlist.changed", {"n": 6}, fresh=True, prev=5))
    assert subs.watermark(a, "playlist:p") == 6
    # version 7 was pushed but lost: the push of 8 says it follows 7
    subs.route(Push("playlist:p", 8, "playlist.changed", {"n": 8}, fresh=True, prev=7))
    assert subs.watermark(a, "playlist:p") == 6
    (cmd, cb), = d.take("subscribe")
    assert cmd.args == {"since": 6}
    # pushes while the resubscribe is in flight are covered by its answer: dropped
    subs.route(Push("playlist:p", 9, "playlist.changed", {"n": 9}, fresh=True, prev=8))
    cb(Reply(9, {"changes": [7, 8, 9]}))
    subs.route(Push("playlist:p", 10, "playlist.changed", {"n": 10}, fresh=True, prev=9))
    await settle(a)
    assert sent_types(a) == ["playlist.changed", "resync", "playlist.changed"]
    assert subs.watermark(a, "playlist:p") == 10
    assert subs.gaps == 1


async def test_host_gap_resubscribes_every_member(setup):
    hub, d, subs = setup
    a, b = conn(hub), conn(hub, "bob")
    for c in (a, b):
        subs.subscribe(c, "playlist:p")
    for i, (cmd, cb) in enumerate(d.take("subscribe")):
        cb(Reply(3 + i, {}))
    subs.on_gap(Gap("playlist:p", 4))
    resubs = d.take("subscribe")
    assert sorted(c.args["since"] for c, _ in resubs) == [3, 4]


async def test_each_leave_names_its_own_connection(setup):
    hub, d, subs = setup
    a, b = conn(hub), conn(hub)
    subs.subscribe(a, "playlist:p")
    (_, cb), = d.take("subscribe")
    cb(Reply(1, {}))
    subs.subscribe(b, "playlist:p")            # b's subscribe is on its way to the host
    subs.leave(a, "playlist:p")                # only a's interest goes: b's join can't be undone by it
    (cmd, _), = d.take("unsubscribe")
    assert cmd.origin == ConnAddress("gw", a.id)
    (_, cb_b), = d.take("subscribe")
    cb_b(Reply(1, {}))
    assert subs.follows(b, "playlist:p")
    b.closed = True                            # a join answered after its socket closed is undone
    subs.subscribe(b, "playlist:q")
    (_, cb_q), = d.take("subscribe")
    cb_q(Reply(1, {}))
    assert [(c.key, c.origin.conn) for c, _ in d.take("unsubscribe")] == [("playlist:q", b.id)]


async def test_a_push_addressed_to_a_connection_reaches_only_that_user(setup):
    hub, d, subs = setup
    a = conn(hub, "alice")
    subs.route(Push("session:bob", 3, "session.ended", {}, user="bob", conn=ConnAddress("gw", a.id), close=True))
    await settle(a)
    assert a.frames == [] and not a.closing
    subs.route(Push("session:alice", 3, "session.ended", {}, user="alice", conn=ConnAddress("gw", a.id), close=True))
    await asyncio.wait_for(_closed(a), 2)
    assert sent_types(a) == ["session.ended"]


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.005)


async def _closed(c):
    while not any(isinstance(f, tuple) for f in c.frames):
        await asyncio.sleep(0.005)


async def test_a_refused_resync_ends_the_subscription_and_says_so(setup):
    hub, d, subs = setup
    a = conn(hub)
    subs.subscribe(a, "playlist:p")
    (_, cb), = d.take("subscribe")
    cb(Reply(2, {}))
    subs.host_restarted(0)
    (_, cb), = d.take("subscribe")
    cb(Reply.fail(SyncopateError(ErrorCode.FORBIDDEN, "no")))
    await settle(a)
    assert sent_types(a) == ["subscription.ended"]
    assert not subs.follows(a, "playlist:p")
    subs.route(Push("playlist:p", 3, "playlist.changed", {}, fresh=True, prev=2))
    await settle(a)
    assert sent_types(a) == ["subscription.ended"]


async def test_slow_reader_is_closed_at_its_byte_budget():
    blocked = asyncio.Event()
    frames = []

    async def never(f):
        await blocked.wait()

    async def close(code, reason):
        frames.append(code)

    slow = Connection("s", Principal("a"), encoding=codec.JSON, client="t", device_id=None,
                      send_raw=never, close=close, max_queued_bytes=10_000)
    for _ in range(100):
        slow.send_frame(b"x" * 500)
    assert slow.closing and slow._queue is None and slow.queued_bytes == 0
    blocked.set()                      # the frame being written completes, then the close follows
    await asyncio.wait_for(_until(lambda: frames), 2)
    assert frames == [4008] and slow.closed
    assert slow.queued_bytes == 0


class _SyncSocket:
    """A socket with the synchronous write of gateway/wsframes.py: `write_now` answers whether the
    caller must await `drain` (the transport over its high-water mark)."""

    def __init__(self):
        self.writes: list[list] = []
        self.events: list = []
        self.backpressured = False
        self.drained = asyncio.Event()

    def write_now(self, frames):
        self.writes.append(list(frames))
        self.events.extend(frames)
        return self.backpressured

    async def drain(self):
        await self.drained.wait()

    async def send_many(self, frames):
        if self.write_now(frames):
            await self.drain()

    async def close(self, code, reason):
        self.events.append(("closed", code))

    def connection(self):
        async def unused(f):
            raise AssertionError("send_raw is not used when write_now is given")
        return Connection("w", Principal("a"), encoding=codec.JSON, client="t", device_id=None,
                          send_raw=unused, close=self.close, send_many=self.send_many,
                          write_now=self.write_now, drain=self.drain)


async def test_frames_of_one_turn_go_in_one_write_without_a_writer_task():
    sock = _SyncSocket()
    c = sock.connection()
    c.send_frame("a")
    c.send_frame("b")
    assert sock.writes == []                 # not written inside the turn that queued them
    await asyncio.sleep(0)                   # one loop turn (call_soon), no deadline involved
    assert sock.writes == [["a", "b"]]
    assert c._writer is None and c.frames_out == 2 and c.queued_bytes == 0
    c.send_frame("c")
    await asyncio.sleep(0)
    assert sock.writes == [["a", "b"], ["c"]] and c._writer is None


async def test_the_sockets_of_one_turn_are_written_by_one_callback_and_one_failure_spares_the_rest():
    from gateway import hub as hub_mod
    socks = [_SyncSocket() for _ in range(3)]
    conns = [s.connection() for s in socks]

    def broken():
        raise RuntimeError("a bug in one socket's flush")
    conns[1]._take = broken                    # the middle socket's flush raises (not its write)
    for i, c in enumerate(conns):
        c.send_frame(f"f{i}")
    loop = asyncio.get_running_loop()
    assert hub_mod._due[loop] == conns         # one list for the turn, in the order queued
    await asyncio.sleep(0)
    assert loop not in hub_mod._due
    assert socks[0].writes == [["f0"]] and socks[2].writes == [["f2"]]
    assert conns[1].closed and not conns[0].closed and not conns[2].closed
    conns[0].send_frame("g")                   # the next turn has a list of its own
    await asyncio.sleep(0)
    assert socks[0].writes == [["f0"], ["g"]]


async def test_a_backpressured_socket_waits_for_its_drain_and_keeps_order():
    sock = _SyncSocket()
    c = sock.connection()
    sock.backpressured = True
    c.send_frame("a")
    await asyncio.sleep(0)
    assert sock.writes == [["a"]] and c._writer is not None and not c._writer.done()
    c.send_frame("b")
    c.send_frame("c")
    await asyncio.sleep(0)
    assert sock.writes == [["a"]]            # nothing more until the peer has read
    sock.backpressured = False
    sock.drained.set()
    await asyncio.wait_for(c._writer, 2)
    assert sock.events == ["a", "b", "c"] and c.frames_out == 3


async def test_close_writes_the_frames_of_its_turn_first():
    sock = _SyncSocket()
    c = sock.connection()
    c.send_frame("bye")
    c.close(4001, "session ended")           # same turn: the frame is not written yet
    await asyncio.wait_for(_until(lambda: ("closed", 4001) in sock.events), 2)
    assert sock.events == ["bye", ("closed", 4001)]


async def test_a_personal_copy_is_the_shared_payload_with_its_keys_added_in_either_encoding():
    """The active device's copy (gateway/streams.py adds `stream`) is written into the shared JSON
    frame: it must be the very frame of the whole payload encoded, and the others get the shared one."""
    import msgpack
    import orjson
    hub, d = Hub("gw"), FakeDispatcher()
    extra = {"stream": {"tracks": [{"uri": "spotify:track:é", "urls": {"96": "/s?x=1&y=ü"}}], "expires_at": 9}}
    subs = Subscriptions("gw", hub, d, personal={
        "player.changed": lambda c, p: extra if c.principal.user_id == "alice" and p.get("active") else None})
    a, b, m = conn(hub, "alice"), conn(hub, "bob"), conn(hub, "alice")
    m.encoding = codec.MSGPACK
    for c in (a, b, m):
        subs.subscribe(c, "devicegroup:g")
    for cmd, cb in d.take("subscribe"):
        cb(Reply(1, {}))
    payload = {"active": True, "devices": [{"id": "d1", "name": "Küche"}], "n": None}
    subs.route(Push("devicegroup:g", 2, "player.changed", payload, fresh=True, prev=1))
    await asyncio.wait_for(_until(lambda: a.frames and b.frames and m.frames), 2)
    whole = {"type": "player.changed", "entity": "devicegroup:g", "version": 2, "payload": {**payload, **extra}}
    assert a.frames[-1] == orjson.dumps(whole).decode()
    assert m.frames[-1] == msgpack.packb(whole, use_bin_type=True)
    assert b.frames[-1] == orjson.dumps({**whole, "payload": payload}).decode()
    # a key the payload has already is not added twice: the whole payload is encoded (extra's value wins)
    subs.route(Push("devicegroup:g", 3, "player.changed", {**payload, "stream": 1}, fresh=True, prev=2))
    await asyncio.wait_for(_until(lambda: len(a.frames) == 2), 2)
    assert orjson.loads(a.frames[-1])["payload"] == {**payload, **extra}


async def test_a_reused_manifest_is_encoded_once_and_spliced_into_each_new_shared_frame():
    """gateway/streams.py hands the same `Personal` back while the manifest is reused: its JSON is
    kept on it, and every frame is still exactly the whole payload encoded."""
    import orjson
    from gateway.streams import Personal
    hub, d = Hub("gw"), FakeDispatcher()
    extra = Personal({"tracks": [{"uri": "spotify:track:é", "urls": {"96": "/s?x=1&y=ü"}}], "expires_at": 9})
    subs = Subscriptions("gw", hub, d, personal={"player.changed": lambda c, p: extra})
    a = conn(hub, "alice")
    subs.subscribe(a, "devicegroup:g")
    (cmd, cb), = d.take("subscribe")
    cb(Reply(1, {}))
    assert extra.json is None
    for v in (2, 3):
        payload = {"active": True, "volume": v * 10}
        subs.route(Push("devicegroup:g", v, "player.changed", payload, fresh=True, prev=v - 1))
        await asyncio.wait_for(_until(lambda: len(a.frames) == v - 1), 2)
        whole = {"type": "player.changed", "entity": "devicegroup:g", "version": v,
                 "payload": {**payload, **extra}}
        assert a.frames[-1] == orjson.dumps(whole).decode()
        assert extra.json == orjson.dumps(dict(extra)).decode()[1:-1]      # kept after the first push


def test_the_hub_indexes_its_users_by_heartbeat_slot():
    """gateway/runner.py's session heartbeat visits one slot's users a tick: the index follows
    add and remove (a user stays while any of its sockets is open)."""
    import zlib
    hub = Hub("gw", heartbeat_slots=15)
    a1, a2, b = conn(hub, "alice"), conn(hub, "alice"), conn(hub, "bob")
    sa, sb = zlib.crc32(b"alice") % 15, zlib.crc32(b"bob") % 15
    assert "alice" in hub.users_by_slot[sa] and "bob" in hub.users_by_slot[sb]
    assert sum(len(s) for s in hub.users_by_slot) == 2
    hub.remove(a1)
    assert "alice" in hub.users_by_slot[sa]
    hub.remove(a2)
    hub.remove(b)
    assert not any(hub.users_by_slot)
