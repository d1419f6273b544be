"""The gateway <-> host data channel: one TCP stream per (gateway, host), msgpack frames.

Why not Ray actor calls for this path: measured here, a Ray call costs about 1.5 ms per hop and
each one burns CPU in both core workers; a command needs two hops (submit, deliver), so Ray's
RPC alone would take most of a 10 ms p99 budget and cap throughput well below 5,000 changes/s
on two cores (docs/performance.md has the before/after). Ray still places, starts, restarts and
finds the hosts (`HostActor.ready()` returns this channel's address) and carries the rare
host-to-host effects; only the hot path is a plain socket.

A TCP stream is also exactly the ordering the design needs: replies and pushes for a gateway
leave the host in release order and arrive in that order, with no sequence numbers to check.

Frame: 4-byte big-endian length + msgpack body.
  handshake:                     actors/channel_auth.py (mutual challenge-response, 4 KiB frames)
  gateway -> host:               [[token, <command>], ...]
  host -> gateway:               [<item>, ...]   items as in actors/host.py ("r" replies, "e" pushes)
"""
from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import msgpack

from actors.channel_auth import HANDSHAKE_TIMEOUT_S, ChannelAuth
from actors.entity import Command, Principal
from protocols.errors import SyncopateError

log = logging.getLogger("syncopate.channel")
HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20


# -- codec -----------------------------------------------------------------------------------------
def _default(obj: Any) -> Any:
    if isinstance(obj, SyncopateError):
        return msgpack.ExtType(1, msgpack.packb([obj.code.value, obj.message, obj.details], use_bin_type=True))
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} can't cross the channel")


def _ext(code: int, data: bytes) -> Any:
    if code == 1:
        c, message, details = msgpack.unpackb(data, raw=False)
        return SyncopateError(c, message, **(details or {}))
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True, default=_default)
    return HEADER.pack(len(body)) + body


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=_ext)


def command_to_wire(cmd: Command) -> list:
    p = cmd.principal
    return [cmd.kind, cmd.entity_id, cmd.op, cmd.args, [p.user_id, p.product, p.device_id, p.system, p.issued_at],
            cmd.op_id, list(cmd.origin) if cmd.origin else None, cmd.follow]


def command_from_wire(w: list) -> Command:
    kind, eid, op, args, p, op_id, origin, follow = w
    return Command(kind, eid, op, args, Principal(p[0], p[1], p[2], bool(p[3]), p[4]), op_id=op_id,
                   origin=tuple(origin) if origin else None, follow=bool(follow))


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(HEADER.size)
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"channel frame of {n} bytes")
    return unpack(await reader.readexactly(n))


# -- host side -------------------------------------------------------------------------------------
class ChannelServer:
    """Accepts gateways' streams for one EntityHost; `send(gateway_id, items)` is its deliver."""

    def __init__(self, host, secret: str | bytes, index: int, *,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.host = host
        self.auth = ChannelAuth(secret, handshake_timeout=handshake_timeout)
        self.index = index
        self.writers: dict[str, asyncio.StreamWriter] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self, bind: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, bind, port)
        return self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self.writers.values()):
            w.close()

    def send(self, gateway_id: str, items: list) -> None:
        w = self.writers.get(gateway_id)
        if w is None or w.is_closing():
            log.debug("gateway %s not connected; %d items dropped", gateway_id, len(items))
            return
        w.write(pack(items))     # no await: the transport buffers; ordering is the write order

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        gateway_id = None
        try:
            # Proven both ways (and the answer written) before anything else is read; a refused
            # peer is already aborted.
            gateway_id = await self.auth.accept(reader, writer, self.host.incarnation, self.index)
            if gateway_id is None:
                return
            old = self.writers.get(gateway_id)
            if old is not None:
                old.close()
            self.writers[gateway_id] = writer
            while True:
                batch = await read_frame(reader)
                # Enqueued in stream order before the next frame is read: per-entity order is the
                # gateway's send order.
                self.host.submit(gateway_id, [(token, command_from_wire(w)) for token, w in batch])
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("channel from %s failed", gateway_id)
        finally:
            if gateway_id is not None and self.writers.get(gateway_id) is writer:
                del self.writers[gateway_id]
                self.host.forget_gateway(gateway_id)
            writer.close()
