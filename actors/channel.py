"""The gateway <-> host data channel: one TCP stream per (gateway, host), msgpack frames.

Why not Ray actor calls for this path: measured here, a Ray call costs about 1.5 ms per hop and
each one burns CPU in both core workers; a command needs two hops (submit, deliver), so Ray's
RPC alone would take most of a 10 ms p99 budget and cap throughput well below 5,000 changes/s
on two cores (docs/performance.md has the before/after). Ray still places, starts, restarts and
finds the hosts (`HostActor.ready()` returns this channel's address) and carries the rare
host-to-host effects; only the hot path is a plain socket.

A TCP stream is also exactly the ordering the design needs: replies and pushes for a gateway
leave the host in release order and arrive in that order, with no sequence numbers to check.

Frame: 4-byte big-endian length + msgpack body (protocols/wire.py: pack_body / unpack_body, which
refuse every msgpack extension type).
  handshake:                     actors/channel_auth.py (mutual challenge-response, 4 KiB frames)
  gateway -> host:               [["c", token, command_to_wire(cmd)], ...]
  host -> gateway:               [host_item_to_wire(item), ...]   ("r" replies, "p" pushes, "g" gaps)

A frame is decoded once. An extension type anywhere in it (a client-forged value that got past the
gateway's decoder: it can't, but the host does not rely on that) decodes to a marker, and only then
are the commands searched: one holding a marker is answered MALFORMED_FRAME for its token and the
stream, with every other client's commands on it, stays up; a marker outside any command makes the
frame undecodable, which closes the stream (it came from an authenticated gateway: a bug there).

Budgets on the host side: a frame never exceeds `max_frame` (batches are split); one item over
`max_item` is replaced (a reply by LIMIT_EXCEEDED, a push by a Gap so the gateway resubscribes);
a gateway whose stream buffers more than `max_buffer` unsent bytes on the host is cut off (its
stream closes; the gateway fails what it had in flight, retryably, and resubscribes).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors.channel_auth import HANDSHAKE_TIMEOUT_S, ChannelAuth
from actors.entity import Command
from actors.framing import HEADER, take_over
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import (MAX_FRAME, Gap, Push, Reply, WireError, answer, command_from_wire, holds_forged,
                            host_item_to_wire, pack_body, unpack_body, unpack_commands)

log = logging.getLogger("syncopate.channel")
MAX_ITEM = 16 << 20            # one reply or push; bigger ones are replaced, never framed
# Items in one frame, at most: a frame is handed on whole, and the reader's loop turn is sliced by
# frames (actors/framing.py SLICE_S). A burst's batches were ~600 commands, 50-90 ms of a host's
# loop each; 64 is a few ms, and a frame's own cost (~10 us) is spread over as many items.
FRAME_ITEMS = 64
MAX_BUFFER = 32 << 20          # unsent bytes buffered on the host for one gateway before its stream is cut


# -- codec -----------------------------------------------------------------------------------------
def pack(obj: Any) -> bytes:
    body = pack_body(obj)
    return HEADER.pack(len(body)) + body


def unpack(body: bytes) -> Any:
    return unpack_body(body)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def frames_of(parts: list[bytes], max_frame: int = MAX_FRAME, max_items: int = FRAME_ITEMS) -> list[bytes]:
    """Already packed items -> length-prefixed frames, each body a msgpack array of at most
    `max_frame` bytes and `max_items` items (a batch that would not fit is split; order is kept)."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 5                                   # the largest array header
    for b in parts:
        if group and (size + len(b) > max_frame or len(group) >= max_items):
            out.append(_frame(group))
            group, size = [], 5
        group.append(b)
        size += len(b)
    if group:
        out.append(_frame(group))
    return out


def _frame(group: list[bytes]) -> bytes:
    body = _array_header(len(group)) + b"".join(group)
    return HEADER.pack(len(body)) + body


def encode_host_items(items: list, *, max_item: int = MAX_ITEM, metrics: Any = None) -> list[bytes]:
    """Each host item packed on its own, so that one that is too big (or a bug: a value msgpack
    cannot encode) is replaced rather than failing or bloating the whole batch."""
    parts = []
    for item in items:
        try:
            b = pack_body(host_item_to_wire(item))
        except Exception as exc:
            log.error("channel: an item could not be encoded (%s: %s)", type(exc).__name__, exc)
            b = None
        if b is None or len(b) > max_item:
            # (the refusal is built here, not for every item: two errors constructed per command,
            # a reply and its push, were 0.6 % of a host's CPU in W2)
            if b is None:
                err = SyncopateError(ErrorCode.INTERNAL, "the answer could not be encoded")
            else:
                err = SyncopateError(ErrorCode.LIMIT_EXCEEDED, f"the answer is larger than {max_item} bytes")
                if metrics is not None:
                    metrics.budget_oversized_items += 1
            if isinstance(item, Push):
                # The subscribers miss this change: tell the gateway, which resubscribes them.
                b = pack_body(host_item_to_wire(Gap(item.key, item.version - 1 if item.fresh else item.version)))
            elif isinstance(item, Gap):
                continue
            else:
                b = pack_body(host_item_to_wire(answer(item[1], Reply.fail(err))))
        parts.append(b)
    return parts


def decode_requests(frame: Any, forged: bool = False) -> tuple[list[tuple[int, Command]], list[tuple[int, SyncopateError]]]:
    """A gateway frame -> (decoded commands, refusals for the items that did not decode). `forged`:
    the frame held a msgpack extension type (wire.unpack_commands): the commands holding one are
    refused for their token; one outside any command makes the whole frame undecodable."""
    if not isinstance(frame, list):
        raise WireError("a command frame is a list")
    good: list[tuple[int, Command]] = []
    bad: list[tuple[int, SyncopateError]] = []
    for item in frame:
        ok_shape = type(item) is list and len(item) == 3 and item[0] == "c"
        if forged and holds_forged(item if not ok_shape else item[:2]):
            raise WireError("an extension type outside any command")
        token = item[1] if ok_shape else (item[1] if type(item) is list and len(item) == 3 else None)
        try:
            if not ok_shape or type(item[2]) is not list:
                raise WireError("a command item is [\"c\", token, <command>]")
            if forged and holds_forged(item[2]):
                raise WireError("a msgpack extension type in the command")
            good.append((token, command_from_wire(item[2])))
        except Exception as exc:
            err = exc if isinstance(exc, SyncopateError) else WireError(f"undecodable command: {type(exc).__name__}")
            if isinstance(token, int) and not isinstance(token, bool):
                bad.append((token, SyncopateError(ErrorCode.MALFORMED_FRAME, err.message)))
            else:
                log.warning("channel: dropped a command item without a token: %s", err.message)
    return good, bad


def encode_requests(requests: list[tuple[int, Command]], max_frame: int = MAX_FRAME) -> tuple[list[bytes], list]:
    """The gateway's side: (frames, [(token, SyncopateError)] for commands that cannot be sent). Each
    command is packed once, on its own (so one too large or unencodable is refused alone), and the
    frames are the packed items joined under an array header."""
    from protocols.wire import command_to_wire
    parts, refused = [], []
    for token, cmd in requests:
        try:
            b = pack_body(["c", token, command_to_wire(cmd)])
        except Exception as exc:
            refused.append((token, SyncopateError(ErrorCode.MALFORMED_FRAME, f"command not encodable: {exc}")))
            continue
        if len(b) + 5 > max_frame:
            refused.append((token, SyncopateError(ErrorCode.FRAME_TOO_LARGE, "the command is too large")))
            continue
        parts.append(b)
    return frames_of(parts, max_frame), refused


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(HEADER.size)
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"channel frame of {n} bytes")
    return unpack(await reader.readexactly(n))


# -- host side -------------------------------------------------------------------------------------
class ChannelServer:
    """Accepts gateways' streams for one EntityHost; `send(gateway_id, items)` is its deliver.

    Budgets (class defaults; set them on the instance before start() to change them):
    `max_frame` bytes per frame (batches are split), `max_item` bytes per reply or push (replaced
    beyond), `max_buffer` unsent bytes per gateway (its stream is cut beyond)."""

    max_frame: int = MAX_FRAME
    max_item: int = MAX_ITEM
    max_buffer: int = MAX_BUFFER

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

    def _take(self, gateway_id: str, requests: list, refused: list) -> None:
        if refused:
            self.host.metrics.malformed_commands += len(refused)
            self.send(gateway_id, [answer(token, Reply.fail(err)) for token, err in refused])
        # Enqueued in stream order before the next frame is read: per-entity order is the
        # gateway's send order.
        self.host.submit(gateway_id, requests)

    def send(self, gateway_id: str, items: list) -> None:
        w = self.writers.get(gateway_id)
        if w is None or w.is_closing():
            log.debug("gateway %s not connected; %d items dropped", gateway_id, len(items))
            return
        metrics = getattr(self.host, "metrics", None)
        frames = frames_of(encode_host_items(items, max_item=self.max_item, metrics=metrics), self.max_frame)
        if len(frames) > 1 and metrics is not None:
            metrics.budget_frames_split += 1
        for frame in frames:
            w.write(frame)       # no await: the transport buffers; ordering is the write order
        if w.transport.get_write_buffer_size() > self.max_buffer:
            # A gateway that does not read (or reads slower than its subscriptions produce) would grow
            # this buffer without bound. Cut it off: it fails its in-flight requests retryably and
            # resubscribes from its watermarks when it reconnects.
            log.warning("gateway %s: %d bytes unsent, over the budget; closing its stream",
                        gateway_id, w.transport.get_write_buffer_size())
            if metrics is not None:
                metrics.budget_stream_closes += 1
            w.transport.abort()

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
            def on_frame(body: bytes) -> None:
                # Decoded and enqueued where the bytes arrive (actors/framing.py), in stream order:
                # per-entity order is the gateway's send order. WireError (an undecodable frame)
                # ends the stream: see the module docstring.
                self._take(gateway_id, *decode_requests(*unpack_commands(body)))
            await take_over(reader, writer, on_frame, MAX_FRAME)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except WireError as err:
            log.error("channel from %s: undecodable frame (%s); closing the stream", gateway_id, err.message)
        except Exception:
            log.exception("channel from %s failed", gateway_id)
        finally:
            if gateway_id is not None and self.writers.get(gateway_id) is writer:
                del self.writers[gateway_id]
                self.host.forget_gateway(gateway_id)
            writer.close()
