"""gateway/inbox.py: data frames reach the session from data_received, in order, and everything
aiohttp did for the socket (close, ping, pong, heartbeat, size limit) it still does."""
import asyncio

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketReader

from gateway.app import GatewayRunner
from gateway.inbox import _SLOTTED, EARLY_FRAMES, STOPPED, Inbox, InboxResponse


class Server:
    """One aiohttp app whose handler attaches a recorder once `ready` is set (the session's open)."""

    def __init__(self, **ws_kw) -> None:
        self.ws_kw = ws_kw
        self.got: list[tuple[object, bool]] = []
        self.ready = asyncio.Event()
        self.attached = asyncio.Event()
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.fail_on = None          # a payload whose handling raises
        self.stop_on = None          # a payload after which the handler asks to stop
        self.count = asyncio.Event()
        self.want = 0

    def on_frame(self, data, is_text: bool):
        if data == self.fail_on:
            raise ValueError("a bug in the session")
        self.got.append((data, is_text))
        if len(self.got) >= self.want:
            self.count.set()
        return data == self.stop_on

    async def handler(self, request):
        ws = self.ws = InboxResponse(**self.ws_kw)
        self.protocol = request.protocol
        await ws.prepare(request)
        await self.ready.wait()
        ws.inbox.attach(self.on_frame)
        self.attached.set()
        ended = None
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                ended = msg.data
                break
        if not self.ended.done():
            self.ended.set_result(ended)
        return ws

    async def __aenter__(self):
        app = web.Application()
        app.router.add_get("/ws", self.handler)
        self.runner = GatewayRunner(app)          # the gateway's connection class, as served
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        self.want = n
        if len(self.got) < n:
            self.count.clear()
            await asyncio.wait_for(self.count.wait(), timeout)


async def test_frames_before_the_session_opened_come_first_in_order_even_past_the_early_cap():
    async with Server() as srv, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(srv.url)
        early = EARLY_FRAMES * 3           # past the cap: the socket pauses, then resumes on attach
        for i in range(early):
            await ws.send_str(f"e{i}")
        await ws.send_bytes(b"\x01binary")
        await asyncio.sleep(0)
        srv.ready.set()
        await srv.attached.wait()
        for i in range(5):
            await ws.send_str(f"l{i}")
        await srv.wait_for(early + 6)
        assert srv.got == ([(f"e{i}", True) for i in range(early)] + [(b"\x01binary", False)]
                           + [(f"l{i}", True) for i in range(5)])
        await ws.close()
        assert await asyncio.wait_for(srv.ended, 5) is None     # an ordinary close: the loop ends


async def test_a_failing_handler_closes_only_its_socket_and_hands_on_nothing_after():
    async with Server() as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        srv.fail_on = "boom"
        ws = await http.ws_connect(srv.url)
        await srv.attached.wait()
        await ws.send_str("a")
        await ws.send_str("boom")
        await ws.send_str("after")
        ended = await asyncio.wait_for(srv.ended, 5)
        assert isinstance(ended, ValueError)
        msg = await asyncio.wait_for(ws.receive(), 5)        # the handler returned: aiohttp closes
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        assert srv.got == [("a", True)]


async def test_a_handler_asking_to_stop_wakes_the_loop_with_stopped():
    async with Server() as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        srv.stop_on = "last"
        ws = await http.ws_connect(srv.url)
        await srv.attached.wait()
        await ws.send_str("x")
        await ws.send_str("last")
        await ws.send_str("never")
        assert await asyncio.wait_for(srv.ended, 5) is STOPPED
        assert srv.got == [("x", True), ("last", True)]
        await ws.close()


async def test_pings_are_answered_and_the_heartbeat_still_pings():
    async with Server(heartbeat=0.2) as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        ws = await http.ws_connect(srv.url, autoping=False)
        await srv.attached.wait()
        await ws.ping(b"are-you-there")
        seen = set()
        while seen != {WSMsgType.PONG, WSMsgType.PING}:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type == WSMsgType.PONG:
                assert msg.data == b"are-you-there"
            elif msg.type == WSMsgType.PING:     # the server's heartbeat
                await ws.pong(msg.data)
            seen.add(msg.type)
        await ws.send_str("still-read")
        await srv.wait_for(1)
        assert srv.got == [("still-read", True)]
        await ws.close()


async def test_a_frame_over_the_hard_cap_closes_with_1009():
    async with Server(max_msg_size=1024) as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        ws = await http.ws_connect(srv.url)
        await srv.attached.wait()
        await ws.send_str("x" * 2048)
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == WSMsgType.CLOSE and msg.data == 1009
        assert srv.got == []


class _Protocol:
    _reading_paused = False

    def pause_reading(self):
        self._reading_paused = True

    def resume_reading(self):
        self._reading_paused = False


def _masked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload   # zero mask


def test_nothing_after_a_close_frame_is_handed_on():
    loop = asyncio.new_event_loop()
    try:
        inbox = Inbox(_Protocol(), 1 << 16, loop=loop)
        got = []
        inbox.attach(lambda data, is_text: got.append(data))
        reader = WebSocketReader(inbox, 1 << 20, compress=False, decode_text=True)
        reader.feed_data(_masked(0x1, b"before") + _masked(0x8, b"\x03\xe8bye") + _masked(0x1, b"after"))
        assert got == ["before"]
        queued = [m for m, _ in inbox._buffer]
        assert [m.type for m in queued] == [WSMsgType.CLOSE]       # the close still reaches the loop
    finally:
        loop.close()


def test_frames_sent_before_a_close_still_reach_a_session_that_opens_after_it():
    loop = asyncio.new_event_loop()
    try:
        inbox = Inbox(_Protocol(), 1 << 16, loop=loop)
        reader = WebSocketReader(inbox, 1 << 20, compress=False, decode_text=True)
        # e.g. a speaker's last `pause` and its close, both before its session's hello
        reader.feed_data(_masked(0x1, b"waiting") + _masked(0x8, b"\x03\xe8") + _masked(0x1, b"after"))
        got = []
        inbox.attach(lambda data, is_text: got.append(data))
        reader.feed_data(_masked(0x1, b"later"))
        assert got == ["waiting"]
        assert [m.type for m, _ in inbox._buffer] == [WSMsgType.CLOSE]
    finally:
        loop.close()


def test_a_stop_while_replaying_the_waiting_frames_ends_the_replay():
    loop = asyncio.new_event_loop()
    try:
        proto = _Protocol()
        inbox = Inbox(proto, 1 << 16, loop=loop)
        reader = WebSocketReader(inbox, 1 << 20, compress=False, decode_text=True)
        reader.feed_data(b"".join(_masked(0x1, b"f%d" % i) for i in range(EARLY_FRAMES + 2)))
        assert proto._reading_paused                    # past the cap: reading paused
        got = []
        inbox.attach(lambda data, is_text: got.append(data) or data == "f3")
        reader.feed_data(_masked(0x1, b"later"))
        assert got == ["f0", "f1", "f2", "f3"]
        assert [(m.type, m.data) for m, _ in inbox._buffer] == [(WSMsgType.ERROR, STOPPED)]
        assert not proto._reading_paused                # resumed: the loop must still see a close
    finally:
        loop.close()


async def test_a_sockets_life_fits_the_classes_shared_attribute_table():
    """Open, frames, a heartbeat's ping and pong, a close: the response's own attribute names stay
    within the 30 that CPython 3.11 shares among a class's instances (beyond them an instance
    builds a dict of its own, 1.6 KB a socket), because aiohttp's lazily assigned ones are slots;
    each slot reads aiohttp's class default until it is assigned."""
    fresh = InboxResponse()
    for name, default in _SLOTTED.items():
        assert getattr(fresh, name) == default and getattr(web.WebSocketResponse, name) == default, name
    async with Server(heartbeat=0.05) as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        ws = await http.ws_connect(srv.url, autoping=False)
        await srv.attached.wait()
        await ws.send_str("one")
        ping = await asyncio.wait_for(ws.receive(), 5)       # the server's heartbeat
        assert ping.type == WSMsgType.PING
        await ws.pong(ping.data)
        await ws.send_str("two")
        await srv.wait_for(2)
        await ws.close()
        await asyncio.wait_for(srv.ended, 5)
        own = vars(srv.ws)
        assert srv.ws._closed and srv.ws._heartbeat_cb is None     # the life did run its course
        assert set(own).isdisjoint(_SLOTTED) and len(own) <= 30, sorted(own)


async def test_an_accepted_upgrade_lets_the_http_request_queue_go():
    """After the upgrade the connection's queue of parsed HTTP requests is gone (an empty tuple,
    760 B less per socket) and frames still flow both ways."""
    async with Server() as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        ws = await http.ws_connect(srv.url)
        await srv.attached.wait()
        assert srv.protocol._messages == () and srv.protocol._parser is None
        await ws.send_str("after")
        await srv.wait_for(1)
        assert srv.got == [("after", True)]
        await ws.close()


async def test_the_heartbeat_timer_is_not_rounded_to_a_whole_second():
    """aiohttp rounds a timer over its connection's timeout_ceil_threshold (default 5 s) up to a
    whole second of the loop's clock: every socket's 20 s heartbeat fell on the same instant, a
    once-a-second stall at 10,000 sockets. GatewayRunner's connections keep each timer where it fell."""
    async with Server(heartbeat=20.0) as srv, aiohttp.ClientSession() as http:
        srv.ready.set()
        loop = asyncio.get_running_loop()
        before = loop.time()
        ws = await http.ws_connect(srv.url)
        await srv.attached.wait()
        await ws.send_str("resets-the-heartbeat")
        await srv.wait_for(1)
        after = loop.time()
        when = srv.ws._heartbeat_when            # the next ping, set by the last data received
        assert before + 20.0 <= when <= after + 20.0
        assert when != int(when)                 # rounded, it would be a whole second (up to 1 s late)
        assert srv.protocol._timeout_ceil_threshold > 20.0
        await ws.close()
