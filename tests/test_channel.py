"""The gateway <-> host stream: codec, authentication, ordering, and a broken stream's recovery."""
import asyncio

import pytest

from actors.channel import ChannelServer, command_from_wire, command_to_wire, pack, read_frame, unpack
from actors.entity import Command, Env, Principal
from actors.host import EntityHost
from gateway.stream_transport import StreamTransport
from protocols.errors import ErrorCode, SyncopateError
from storage.memory import MemoryStore
from tests.toy import Counter

SECRET = "channel-test-secret-0123456789abcdef"


def test_command_and_error_round_trip():
    cmd = Command("playlist", "p1", "yjs_update", {"update": b"\x00\x01", "n": [1, 2]},
                  Principal("alice", "free", "phone", False, 1234), op_id="op-1", origin=("g0", "c7"), follow=True)
    back = command_from_wire(unpack(pack(command_to_wire(cmd))[4:]))
    assert back == cmd
    err = SyncopateError(ErrorCode.CONFLICT, "moved on", snapshot_id="abc")
    item = unpack(pack([["r", 1, False, err, 3]])[4:])[0]
    assert item[3].code == ErrorCode.CONFLICT and item[3].details == {"snapshot_id": "abc"}


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
    assert [it[3]["total"] for it in received] == list(range(1, 101))


async def test_a_peer_without_the_secret_is_refused(wired):
    host, server, transport, received = wired
    reader, writer = await asyncio.open_connection(*transport.handles[0].addr)
    writer.write(pack({"gateway": "intruder", "auth": "0" * 64}))
    with pytest.raises(asyncio.IncompleteReadError):
        await asyncio.wait_for(read_frame(reader), 5)
    assert "intruder" not in server.writers
    writer.close()


async def test_a_broken_stream_is_reopened_and_interest_reset(wired):
    host, server, transport, received = wired
    resets = []
    transport.on_reset = resets.append
    p = Principal("alice")
    transport.send(0, [(1, Command("counter", "c", "subscribe", {}, p, origin=("g0", "c1")))])
    await wait_for(lambda: len(received) == 1)
    assert host.interest["counter:c"] == {"g0"}
    server.writers["g0"].close()                     # the stream breaks
    await wait_for(lambda: transport.writers[0] is None)
    await wait_for(lambda: "counter:c" not in host.interest or not host.interest["counter:c"])
    with pytest.raises(ConnectionError):
        transport.send(0, [(2, Command("counter", "c", "get", {}, p))])
    assert await transport.ping(0) == host.incarnation   # the liveness ping re-opens it
    assert resets == [0]                                 # and the gateway re-subscribes
    transport.send(0, [(3, Command("counter", "c", "get", {}, p))])
    await wait_for(lambda: len(received) == 2)
