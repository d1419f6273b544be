"""The gateway <-> host stream: codec, authentication, ordering, and a broken stream's recovery."""
import asyncio
import secrets

import pytest

import msgpack

from actors import channel_auth
from actors.channel import HEADER, ChannelServer, pack, read_frame, unpack
from actors.channel_auth import ChannelAuth, HandshakeError, encode, read_hello
from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from gateway.stream_transport import StreamTransport
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import (ConnAddress, Gap, Push, Reply, answer, command_from_wire, command_to_wire,
                            host_item_from_wire, host_item_to_wire, pack_body)
from storage.memory import MemoryStore
from tests.toy import Counter

SECRET = "channel-test-secret-0123456789abcdef"


def test_command_and_error_round_trip():
    cmd = Command("playlist", "p1", "yjs_update", {"update": b"\x00\x01", "n": [1, 2]},
                  Principal("alice", "free", "phone", False, 1234), op_id="op-1",
                  origin=ConnAddress("g0", "c7"), follow=True)
    back = command_from_wire(unpack(pack(command_to_wire(cmd))[4:]))
    assert back == cmd
    err = SyncopateError(ErrorCode.CONFLICT, "moved on", snapshot_id="abc")
    _, token, reply = host_item_from_wire(unpack(pack([host_item_to_wire(answer(1, Reply(3, None, err)))])[4:])[0])
    assert token == 1 and reply.error.code == ErrorCode.CONFLICT and reply.error.details == {"snapshot_id": "abc"}


class _Handle:
    """Stands in for a Ray actor handle: `.ready.remote()` / `.ping.remote()` are awaitables."""

    def __init__(self, server, host, addr):
        self.server, self.host, self.addr = server, host, addr
        outer = self

        class _M:
            def __init__(self, fn):
                self.fn = fn

            def remote(self):
                return self.fn()

        async def ready():
            return {"incarnation": outer.host.incarnation, "addr": list(outer.addr), "index": 0}

        async def ping():
            return outer.host.incarnation

        self.ready, self.ping = _M(ready), _M(ping)


@pytest.fixture
async def wired():
    store = MemoryStore()
    host = EntityHost("h0", store, {"counter": Counter}, Env())
    server = ChannelServer(host, SECRET, 0)
    host._deliver = server.send
    await host.start()
    addr = await server.start()
    received = []
    transport = StreamTransport("g0", [_Handle(server, host, addr)], SECRET, lambda h, inc, items: received.extend(items))
    await transport.start()
    yield host, server, transport, received
    await transport.close()
    await server.close()
    await host.close(passivate=False)


async def wait_for(pred, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_answers_come_back_in_order(wired):
    host, server, transport, received = wired
    p = Principal("alice")
    transport.send(0, [(i, Command("counter", "c", "add", {"n": 1}, p)) for i in range(1, 101)])
    await wait_for(lambda: len(received) == 100)
    assert [it[1] for it in received] == list(range(1, 101))
    assert [it[2].payload["total"] for it in received] == list(range(1, 101))


async def closed(reader, timeout=5.0) -> None:
    """Wait until the peer closes (EOF or reset); fails if it is still open after `timeout`."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except ConnectionError:
        pass


async def play_gateway(reader, writer, auth, gateway_id="g1") -> bytes:
    """Play the gateway's part by hand: read the host's hello, write a correct answer; its bytes."""
    hello = await read_hello(reader)
    nonce = secrets.token_bytes(32)
    frame = encode({"gateway": gateway_id, "nonce": nonce, "proof": auth.gateway_proof(hello["nonce"], nonce, gateway_id)})
    writer.write(frame)
    return frame


async def test_the_handshake_is_mutual_and_fresh(wired):
    host, server, transport, received = wired
    assert transport.incarnations[0] == host.incarnation and "g0" in server.writers
    nonces = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
        hello = await read_hello(reader)
        nonces.append(hello["nonce"])
        assert "incarnation" not in hello                # nothing about the host before proof
        writer.close()
    assert len(nonces[0]) == 32 and nonces[0] != nonces[1]


async def test_a_peer_without_the_secret_is_refused(wired):
    host, server, transport, received = wired
    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    await play_gateway(reader, writer, ChannelAuth("another-secret-of-enough-length-0123456"), "intruder")
    await closed(reader)                             # no answer: aborted
    assert "intruder" not in server.writers
    writer.close()
    # and a real gateway holding the wrong secret fails to connect
    wrong = StreamTransport("g9", transport.handles, "another-secret-of-enough-length-0123456", lambda *a: None)
    with pytest.raises(ConnectionError):
        await wrong.start()
    assert not wrong.connected(0) and "g9" not in server.writers


async def test_a_replayed_answer_is_refused(wired):
    host, server, transport, received = wired
    auth = ChannelAuth(SECRET)
    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    recorded = await play_gateway(reader, writer, auth, "g1")
    proven = await read_hello(reader)                # the genuine exchange succeeds
    assert proven["incarnation"] == host.incarnation
    await wait_for(lambda: "g1" in server.writers)
    writer.close()
    await wait_for(lambda: "g1" not in server.writers)
    # Someone who saw that stream replays the gateway's answer on a new one: the nonce moved on.
    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    await read_hello(reader)
    writer.write(recorded)
    await closed(reader)
    assert "g1" not in server.writers
    writer.close()


async def test_an_oversize_frame_before_authentication_is_refused_at_once(wired):
    host, server, transport, received = wired
    server.auth.handshake_timeout = 60               # so only the size check can close it in time
    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    await read_hello(reader)
    writer.write(channel_auth.HEADER.pack(64 << 20) + b"x" * 100)   # claims 64 MiB, sends 100 bytes
    await closed(reader, timeout=2.0)                # closed without waiting for the body
    assert server.auth._pending == 0
    writer.close()


async def test_a_silent_peer_is_dropped_at_the_deadline(wired):
    host, server, transport, received = wired
    server.auth.handshake_timeout = 0.2
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    t0 = loop.time()
    await read_hello(reader)                         # then say nothing
    await closed(reader, timeout=5.0)
    assert loop.time() - t0 >= 0.15                  # it was the deadline that closed it
    assert server.auth._pending == 0
    writer.close()


async def test_the_gateway_refuses_a_host_that_cannot_prove_the_secret():
    impostor = ChannelAuth("an-impostor-secret-of-enough-length-012345")
    seen = []

    async def fake_host(reader, writer):
        # Speaks the protocol, accepts any gateway, and proves itself with the wrong secret.
        nonce = secrets.token_bytes(32)
        writer.write(encode({"hello": channel_auth.GREETING, "v": channel_auth.VERSION, "nonce": nonce}))
        msg = await read_hello(reader)
        seen.append(msg["gateway"])
        writer.write(encode({"incarnation": "fake", "host": 0,
                             "proof": impostor.host_proof(msg["nonce"], nonce, "fake", 0, msg["gateway"])}))
        await closed(reader)

    srv = await asyncio.start_server(fake_host, "127.0.0.1", 0)
    addr = srv.sockets[0].getsockname()[:2]

    class Impostor:
        incarnation = "fake"

    transport = StreamTransport("g0", [_Handle(None, Impostor, addr)], SECRET, lambda *a: None)
    with pytest.raises(HandshakeError):
        await transport.start()
    assert seen == ["g0"] and not transport.connected(0) and transport.incarnations.get(0) is None
    srv.close()
    await srv.wait_closed()


async def test_a_broken_stream_is_reopened_and_interest_reset(wired):
    host, server, transport, received = wired
    resets = []
    transport.on_reset = resets.append
    p = Principal("alice")
    transport.send(0, [(1, Command("counter", "c", "subscribe", {}, p, origin=("g0", "c1")))])
    await wait_for(lambda: len(received) == 1)
    assert host.interested("counter:c") == {"g0"}
    server.writers["g0"].close()                     # the stream breaks
    await wait_for(lambda: transport.writers[0] is None)
    await wait_for(lambda: "counter:c" not in host.interest)
    with pytest.raises(ConnectionError):
        transport.send(0, [(2, Command("counter", "c", "get", {}, p))])
    assert await transport.ping(0) == host.incarnation   # the liveness ping re-opens it
    assert resets == [0]                                 # and the gateway re-subscribes
    transport.send(0, [(3, Command("counter", "c", "get", {}, p))])
    await wait_for(lambda: len(received) == 2)


def test_secrets_are_separate_files_and_reach_the_actors_as_paths(tmp_path):
    import stat

    from gateway.auth import CHANNEL_SECRET_FILE, load_secret, secret_path
    from syncopate.server import ServerSpec
    token_file = secret_path(tmp_path, None)
    channel_file = secret_path(tmp_path, None, CHANNEL_SECRET_FILE)
    for f in (token_file, channel_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_secret(tmp_path) != load_secret(tmp_path, name=CHANNEL_SECRET_FILE)
    assert load_secret(tmp_path) == load_secret(tmp_path)            # created once, then read
    with pytest.raises(FileNotFoundError):
        secret_path(tmp_path, tmp_path / "missing.key")                # a named file is never invented
    spec = ServerSpec(data_dir=str(tmp_path)).actor_spec(str(token_file), str(channel_file))
    values = {token_file.read_text(), channel_file.read_text()}
    assert spec["secret_file"] == str(token_file) and spec["channel_secret_file"] == str(channel_file)
    assert not values & {v for v in spec.values() if isinstance(v, str)}


def test_the_channel_bind_is_a_specific_address():
    from actors.ray_host import channel_bind
    for wildcard in ("0.0.0.0", "::"):
        with pytest.raises(ValueError):
            channel_bind({"channel_bind": wildcard})
    assert channel_bind({}) == "127.0.0.1"
    assert channel_bind({"channel_bind": "127.0.0.2"}) == "127.0.0.2"


async def test_the_channel_advertises_the_address_it_bound():
    server = ChannelServer(None, SECRET, 0)
    try:
        assert tuple(await server.start("127.0.0.2", 0))[0] == "127.0.0.2"     # what ready() returns
    finally:
        await server.close()


# -- the typed wire: hostile input, frame and buffer budgets ---------------------------------------
async def raw_gateway(server, addr, gateway_id="raw"):
    """An authenticated gateway speaking raw frames (to send what StreamTransport never would)."""
    reader, writer = await asyncio.open_connection(*addr)
    ack = await ChannelAuth(SECRET).connect(reader, writer, gateway_id, 0)
    assert ack["incarnation"] == server.host.incarnation
    return reader, writer


def command_item(token, cmd):
    return ["c", token, command_to_wire(cmd)]


async def test_a_forged_extension_type_in_args_is_refused_and_the_stream_stays_up(wired):
    host, server, transport, received = wired
    p = Principal("alice")
    forged = Command("counter", "c", "add", {"n": msgpack.ExtType(1, msgpack.packb([ErrorCode.INTERNAL.value, "x", {}]))}, p)
    transport.send(0, [(1, forged), (2, Command("counter", "c", "add", {"n": 4}, p))])
    await wait_for(lambda: len(received) == 2)
    by_token = {it[1]: it[2] for it in received}
    assert by_token[1].error.code == ErrorCode.MALFORMED_FRAME
    assert by_token[2].error is None and by_token[2].payload == {"total": 4}
    assert transport.writers[0] is not None and "g0" in server.writers      # the stream is still up
    transport.send(0, [(3, Command("counter", "c", "get", {}, p))])
    await wait_for(lambda: len(received) == 3)
    assert received[2][2].payload["history"] == [4]                           # the forged one changed nothing
    assert host.metrics.malformed_commands == 1


async def test_a_mistyped_command_item_gets_malformed_frame_for_its_token(wired):
    host, server, transport, received = wired
    reader, writer = await raw_gateway(server, transport.handles[0].addr)
    good = command_item(9, Command("counter", "c", "get", {}, Principal("alice")))
    frame = [["c", 7, pack_body(["counter", "c"])], ["c", 8, b"\xc1"], good, ["x", "no-int-token", b""]]
    writer.write(pack(frame))
    items = [host_item_from_wire(w) for w in await asyncio.wait_for(read_frame(reader), 5)]
    while len(items) < 3:
        items += [host_item_from_wire(w) for w in await asyncio.wait_for(read_frame(reader), 5)]
    by_token = {it[1]: it[2] for it in items}
    assert set(by_token) == {7, 8, 9}
    assert by_token[7].error.code == by_token[8].error.code == ErrorCode.MALFORMED_FRAME
    assert by_token[9].error is None
    writer.close()


async def test_an_undecodable_frame_closes_that_stream(wired):
    host, server, transport, received = wired
    reader, writer = await raw_gateway(server, transport.handles[0].addr)
    writer.write(pack([msgpack.ExtType(1, b"x")]))       # the frame itself carries an extension type
    with pytest.raises(asyncio.IncompleteReadError):
        await asyncio.wait_for(read_frame(reader), 5)
    await wait_for(lambda: "raw" not in server.writers)
    assert "g0" in server.writers                        # other gateways' streams are untouched
    writer.close()


async def test_batches_are_split_so_no_frame_exceeds_the_limit(wired):
    host, server, transport, received = wired
    server.max_frame = 4096
    reader, writer = await raw_gateway(server, transport.handles[0].addr)
    p = Principal("alice")
    writer.write(pack([command_item(i, Command("counter", "s", "add", {"n": 1}, p)) for i in range(1, 301)]))
    tokens, sizes = [], []
    while len(tokens) < 300:
        head = await asyncio.wait_for(reader.readexactly(4), 5)
        (n,) = HEADER.unpack(head)
        sizes.append(n)
        tokens += [host_item_from_wire(w)[1] for w in unpack(await reader.readexactly(n))]
    assert tokens == list(range(1, 301)) and max(sizes) <= 4096 and len(sizes) > 1
    writer.close()


async def test_an_oversized_reply_becomes_limit_exceeded_and_a_push_a_gap(wired):
    host, server, transport, received = wired
    server.max_item = 300
    p = Principal("alice")
    for i in range(100):
        await host.call(Command("counter", "big", "add", {"n": 1000 + i}, p))
    transport.send(0, [(1, Command("counter", "big", "get", {}, p))])
    await wait_for(lambda: len(received) == 1)
    assert received[0][2].error.code == ErrorCode.LIMIT_EXCEEDED
    server.send("g0", [Push("counter:big", 7, "counter.changed", "x" * 1000, fresh=True)])
    await wait_for(lambda: len(received) == 2)
    assert received[1] == Gap("counter:big", 6)
    assert host.metrics.budget_oversized_items == 2


async def test_a_gateway_that_does_not_read_is_cut_off_at_the_buffer_budget(wired):
    host, server, transport, received = wired
    server.max_buffer = 1 << 20
    server.max_item = 60 << 20
    reader, writer = await raw_gateway(server, transport.handles[0].addr)   # never reads
    server.send("raw", [Push("counter:x", 1, "counter.changed", b"\0" * (40 << 20), fresh=True)])
    await wait_for(lambda: "raw" not in server.writers)
    assert host.metrics.budget_stream_closes == 1
    assert "g0" in server.writers
    writer.close()


async def test_the_reader_keeps_no_command_of_a_frame_it_handed_on(wired):
    """Waiting for the next frame, the host's reader holds nothing of the last one: a burst (every
    device's heartbeat at once) must not stay in memory until the gateway next sends something."""
    import gc
    host, server, transport, received = wired
    p = Principal("alice")
    transport.send(0, [(i, Command("counter", "c", "add", {"n": 1, "tag": "burst"}, p)) for i in range(1, 201)])
    await wait_for(lambda: len(received) == 200)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is Command and o.args.get("tag") == "burst"]
    assert alive == []


async def test_the_gateway_reader_keeps_no_frame_it_handed_on(wired):
    """The gateway's side of the same: once a frame of answers is handed on, the raw frame is gone."""
    import gc
    host, server, transport, received = wired
    server.send("g0", [answer(i, Reply(1, {"n": i})) for i in range(1, 301)])      # one frame of 300
    await wait_for(lambda: len(received) == 300)
    gc.collect()
    raw = [o for o in gc.get_objects() if type(o) is list and len(o) == 300 and all(type(w) is list for w in o)]
    assert raw == []


async def test_a_command_frame_in_the_same_write_as_the_handshake_is_answered(wired):
    """The host's reader takes over the stream from the handshake's StreamReader (actors/framing.py):
    bytes that StreamReader already holds past the handshake are the first frames, not lost."""
    host, server, transport, received = wired
    first = pack([command_item(5, Command("counter", "c", "add", {"n": 2}, Principal("alice")))])

    class _Joined:
        """The gateway's proof and its first command frame leave in one write."""

        def __init__(self, w):
            self.w, self.transport, self.sent = w, w.transport, False

        def write(self, b):
            if b"proof" in b and not self.sent:
                self.sent = True
                b += first
            self.w.write(b)

        def get_extra_info(self, *a):
            return self.w.get_extra_info(*a)

    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    joined = _Joined(writer)
    await ChannelAuth(SECRET).connect(reader, joined, "joined", 0)
    assert joined.sent
    items = [host_item_from_wire(w) for w in await asyncio.wait_for(read_frame(reader), 5)]
    assert [(it[1], it[2].payload) for it in items] == [(5, {"total": 2})]
    writer.close()


async def test_frame_protocol_hands_on_whole_frames_however_the_bytes_arrive():
    from actors.framing import FrameProtocol
    from protocols.wire import WireError
    loop = asyncio.get_running_loop()

    class _T:
        closed = False

        def close(self):
            self.closed = True

    bodies = [b"a", b"", b"b" * 300, bytes(range(256)) * 40]
    stream = b"".join(HEADER.pack(len(b)) + b for b in bodies)
    for step in (1, 3, 7, len(stream)):                     # byte by byte, odd chunks, all at once
        got = []
        fp = FrameProtocol(got.append, 1 << 20, loop.create_future())
        fp.transport = _T()
        for i in range(0, len(stream), step):
            fp.data_received(stream[i:i + step])
        assert got == bodies and not fp.done.done()
        fp.eof_received()
        with pytest.raises(ConnectionError):
            fp.done.result()
    # an oversize frame ends the stream with WireError; nothing after it is handed on
    got = []
    fp = FrameProtocol(got.append, 1000, loop.create_future())
    fp.transport = _T()
    fp.data_received(HEADER.pack(1) + b"x" + HEADER.pack(1001) + b"y" * 1001 + HEADER.pack(1) + b"z")
    assert got == [b"x"] and fp.transport.closed
    with pytest.raises(WireError):
        fp.done.result()
    # what on_frame raises ends the stream with it, the transport closed, later frames unread

    def boom(body):
        if body == b"bad":
            raise ValueError("undecodable")
        got.append(body)
    got = []
    fp = FrameProtocol(boom, 1000, loop.create_future())
    fp.transport = _T()
    fp.data_received(HEADER.pack(2) + b"ok" + HEADER.pack(3) + b"bad" + HEADER.pack(5))
    fp.data_received(b"after")
    assert got == [b"ok"] and fp.transport.closed
    with pytest.raises(ValueError):
        fp.done.result()
    # an EOF mid-frame is a ConnectionError that says so
    fp = FrameProtocol(got.append, 1000, loop.create_future())
    fp.transport = _T()
    fp.data_received(HEADER.pack(10) + b"half")
    fp.eof_received()
    with pytest.raises(ConnectionError, match="mid-frame"):
        fp.done.result()


async def test_frame_protocol_hands_on_one_slice_per_loop_turn_and_keeps_stream_order(monkeypatch):
    """A read holding more frames than one slice (actors/framing.py SLICE_S) is handed on over
    several loop turns: past its slice the protocol stops reading, whatever else became ready runs
    (here a callback scheduled by the first frame), then the rest follows in order and reading
    resumes. An end that arrives meanwhile (take_over's buffered EOF) comes after those frames."""
    from actors import framing
    loop = asyncio.get_running_loop()
    clock = [0.0]
    monkeypatch.setattr(framing, "perf_counter", lambda: clock[0])

    class _T:
        def __init__(self):
            self.reading, self.pauses, self.closed = True, 0, False

        def pause_reading(self):
            self.reading, self.pauses = False, self.pauses + 1

        def resume_reading(self):
            self.reading = True

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

    order = []
    all_in = asyncio.Event()

    def on_frame(body):
        order.append(body)
        clock[0] += framing.SLICE_S / 2              # each frame takes half a slice
        if body == b"f0":
            loop.call_soon(order.append, "other")    # ready before the second slice
        if len(order) == 11:
            all_in.set()

    fp = framing.FrameProtocol(on_frame, 1000, loop.create_future())
    fp.transport = _T()
    fp.data_received(b"".join(HEADER.pack(2) + f"f{i}".encode() for i in range(10)))
    assert order == [b"f0", b"f1", b"f2"] and not fp.transport.reading    # one slice, then paused
    fp.eof_received()                                # the end, buffered behind the slice
    assert not fp.done.done()
    await asyncio.wait_for(all_in.wait(), 5)
    assert order == [b"f0", b"f1", b"f2", "other", *[f"f{i}".encode() for i in range(3, 10)]]
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(fp.done, 5)           # and then the end
    # without an end, reading resumes once the buffer holds no whole frame
    order.clear()
    all_in.clear()
    fp = framing.FrameProtocol(on_frame, 1000, loop.create_future())
    fp.transport = _T()
    fp.data_received(b"".join(HEADER.pack(2) + f"f{i}".encode() for i in range(10)) + HEADER.pack(4) + b"pa")
    await asyncio.wait_for(all_in.wait(), 5)       # set in the last slice, which then resumed reading
    assert fp.transport.reading and fp.transport.pauses >= 1 and not fp.done.done()
    fp.data_received(b"rt")
    assert order[-1] == b"part"


def test_a_batch_is_split_into_frames_of_at_most_frame_items_in_order():
    from actors.channel import FRAME_ITEMS, frames_of
    from protocols.wire import pack_body, unpack_body
    parts = [pack_body(["c", i, "x"]) for i in range(FRAME_ITEMS * 2 + 5)]
    frames = frames_of(parts)
    bodies = [unpack_body(f[HEADER.size:]) for f in frames]
    assert [len(b) for b in bodies] == [FRAME_ITEMS, FRAME_ITEMS, 5]
    assert [item[1] for b in bodies for item in b] == list(range(FRAME_ITEMS * 2 + 5))
