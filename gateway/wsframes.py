"""Several websocket frames in one socket write.

A connection's writer (gateway/hub.py) often has more than one frame ready at once — a command's
answer and the push it caused, both for the sender, arrive in the same host frame — and aiohttp
writes each with its own `transport.write`, i.e. its own `send` system call: measured, a quarter of
the gateway's CPU under load was those calls. This module builds the server's (unmasked,
uncompressed: the sockets are created with compress=False) data frames itself and hands the
transport one buffer. Control frames (ping, pong, close) stay aiohttp's; they land between whole
frames, since each write here is whole frames.

It relies on two attributes of aiohttp's WebSocketResponse that are not public (`_writer.transport`
and `_writer.protocol._drain_helper`, stable across aiohttp 3.x); tests/test_gateway_input.py and
every websocket test exercise it.
"""
from __future__ import annotations

import struct
from typing import Any

from aiohttp import web

HIGH_WATER = 256 << 10            # bytes buffered in the transport before a write waits for it to drain
LARGE = 64 << 10                  # a payload this big is written on its own (no copy into the join)
_LEN2 = struct.Struct("!BBH")
_LEN3 = struct.Struct("!BBQ")


def header(opcode: int, n: int) -> bytes:
    first = 0x80 | opcode          # FIN, no RSV bits (no compression)
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return _LEN2.pack(first, 126, n)
    return _LEN3.pack(first, 127, n)


class FrameWriter:
    """`write_now(frames)`: str frames go as text, bytes as binary, in order, in one write, at once;
    it answers whether the caller must `await drain()` before writing more (the transport is over
    its high-water mark). `await write(frames)` is both."""

    __slots__ = ("ws",)

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    # The connection's other two callables (gateway/hub.py), as methods rather than a closure each
    # per socket.
    def send_raw(self, frame: Any):
        """One frame through aiohttp: text for a str, binary for bytes."""
        return self.ws.send_str(frame) if isinstance(frame, str) else self.ws.send_bytes(frame)

    def close(self, code: int, reason: str):
        return self.ws.close(code=code, message=reason.encode())

    def write_now(self, frames: list[Any]) -> bool:
        writer = self.ws._writer
        transport = writer.transport if writer is not None else None
        if transport is None or transport.is_closing() or self.ws.closed:
            raise ConnectionResetError("the websocket is closing")
        parts: list[bytes] = []
        for f in frames:
            if isinstance(f, str):
                payload, op = f.encode(), 0x1
            else:
                payload, op = f, 0x2
            n = len(payload)
            if n >= LARGE:
                if parts:
                    transport.write(b"".join(parts))
                    parts = []
                transport.write(header(op, n))
                transport.write(payload)
            else:
                parts.append(header(op, n))
                parts.append(payload)
        if parts:
            transport.write(b"".join(parts))
        # the peer reads slower than we write: wait as aiohttp's own writer does (its protocol
        # pauses writing at the transport's high-water mark)
        return transport.get_write_buffer_size() > HIGH_WATER and writer.protocol._paused

    async def drain(self) -> None:
        writer = self.ws._writer
        if writer is not None and writer.protocol._paused:
            await writer.protocol._drain_helper()

    async def write(self, frames: list[Any]) -> None:
        if self.write_now(frames):
            await self.drain()
