"""The host channel's frames handed on where their bytes arrive (actors/channel.py's streams).

Both ends of a channel stream read length-prefixed frames (4-byte big-endian length, then the
body). Read through asyncio's StreamReader, each frame cost a task wake-up (the reader's waiter
future, a `call_soon`, a task step) and two `readexactly` coroutines, and the stream's bytes were
copied into the reader's buffer and out again; the frame's consumer (the host's `submit`, the
gateway's `receive`) is synchronous, so none of that bought anything. gateway/inbox.py does the
same for the websockets.

`take_over(reader, writer, on_frame, max_frame)` runs once the handshake (actors/channel_auth.py,
which keeps the StreamReader) is done: the transport's protocol becomes a `FrameProtocol` that
calls `on_frame(body)` for each whole frame from `data_received`, in stream order, starting with
any bytes the StreamReader had already buffered. The StreamWriter keeps writing through the same
transport (nobody awaits its drain on these streams: writes are buffered, budgets are counted on
the transport, actors/channel.py). It answers a future that ends when the stream does:
ConnectionError for a close or an EOF (mid-frame or not), WireError for an oversize frame,
whatever `on_frame` raised otherwise (the transport is closed first, so nothing after that frame is
read). The reading task awaits that future and cleans up as it did around its read loop.

A read hands on frames for at most `SLICE_S` of the loop's time. One socket read is up to 256 KB,
and a burst (20,000 websockets closing at once in `simulations.bench_library_push`: frames of
~600 commands, 50-90 ms each) made a host's loop run a second or more of frames in one turn, so
its lease renewal (a timer and two more turns) came late and the lease lapsed: the host dropped
every entity it owned, and re-activating them fed the next lapse. Past its slice the protocol
stops reading the transport and continues on the loop's next turn (`call_soon`), behind whatever
else became ready — timers, the store's answers, the other gateways' streams; the kernel's buffer
and then TCP hold the rest, which pushes back on the sender. Stream order is unchanged: the rest
waits in this protocol's buffer and nothing is read past it. The senders keep frames small enough
to slice (actors/channel.py `FRAME_ITEMS`).
"""
from __future__ import annotations

import asyncio
import struct
from time import perf_counter
from typing import Callable

from protocols.wire import WireError

HEADER = struct.Struct(">I")                      # a frame's length, before its body
_HEAD = HEADER.size
SLICE_S = 0.005                                   # frames handed on per loop turn, at most this long


class FrameProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_eof", "_later", "_max", "_on_frame", "done", "transport")

    def __init__(self, on_frame: Callable[[bytes], None], max_frame: int, done: asyncio.Future) -> None:
        self._on_frame = on_frame
        self._max = max_frame
        self._buf = bytearray()
        self._later = False                        # past a slice: reading paused, the rest next turn
        self._eof = False                          # the end came while a slice was pending
        self.done = done
        self.transport: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return                                  # ended: nothing after the frame that ended it
        buf = self._buf
        if self._later:
            buf += data                             # a slice is pending: these wait behind it
            return
        if not buf:
            # The common case, a read that is whole frames: taken from `data` without the buffer.
            pos = self._frames(data, 0, len(data))
            if pos < len(data) and not self.done.done():
                buf += data[pos:]
            return
        buf += data
        pos = self._frames(buf, 0, len(buf))
        del buf[:pos]

    def _frames(self, data, pos: int, end: int) -> int:
        """Hands on the whole frames in data[pos:end] for one slice; answers where the first frame
        not handed on starts (a partial one, or the next after the slice)."""
        on_frame, limit = self._on_frame, self._max
        deadline = perf_counter() + SLICE_S
        while end - pos >= _HEAD:
            (n,) = HEADER.unpack_from(data, pos)
            if n > limit:
                self._end(WireError(f"channel frame of {n} bytes"))
                return end
            stop = pos + _HEAD + n
            if stop > end:
                break
            body = bytes(data[pos + _HEAD:stop])
            pos = stop
            try:
                on_frame(body)
            except BaseException as exc:            # noqa: BLE001 - handed to the reading task
                self._end(exc)
                return end
            if end - pos >= _HEAD and perf_counter() > deadline:
                self._continue_later()
                break
        return pos

    def _continue_later(self) -> None:
        if not self._later:
            self._later = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._continue)

    def _continue(self) -> None:
        """The next slice of what a read left in the buffer; reading resumes once no whole frame
        is left in it."""
        self._later = False
        if self.done.done():
            return
        buf = self._buf
        del buf[:self._frames(buf, 0, len(buf))]
        if self._later or self.done.done():
            return
        if self._eof:
            self.eof_received()                     # every whole frame before the end is handed on
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def _end(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        if self._later:
            # (only from take_over: a paused transport reads no end) the frames before it first
            self._eof = True
            return True
        self._end(ConnectionError("the peer closed the stream" + (" mid-frame" if self._buf else "")))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc or "closed")))
        self._buf = bytearray()

    # the StreamWriter's flow control is not used on these streams (see the module docstring)
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def take_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              on_frame: Callable[[bytes], None], max_frame: int) -> asyncio.Future:
    """From here on the stream's frames go to `on_frame` (see the module); answers the future that
    ends with the stream."""
    transport = writer.transport
    done = asyncio.get_running_loop().create_future()
    proto = FrameProtocol(on_frame, max_frame, done)
    proto.transport = transport
    # What the StreamReader read past the handshake (the peer may write its first frames at once),
    # and whether it already saw the end. StreamReader's buffer is not public; it has been a
    # bytearray `_buffer` in every CPython since 3.4 (tests/test_channel.py sends a frame in the
    # handshake's read to pin it).
    early = bytes(reader._buffer)
    reader._buffer.clear()
    eof = reader.at_eof()
    transport.set_protocol(proto)
    if not transport.is_reading() and not transport.is_closing():
        transport.resume_reading()                  # the StreamReader may have paused it
    if early:
        proto.data_received(early)
    if eof and not done.done():
        proto.eof_received()
    return done
