"""The gateway's side of the host channel (actors/channel.py): one TCP stream per host.

Ray finds the hosts (`HostActor.ready()` answers the channel address and the incarnation) and
keeps them alive; this class connects, writes command batches, and reads the ordered stream of
replies and pushes. A stream that breaks is re-opened by the next liveness ping; whatever was in
flight on it is failed (retryable) and the subscriptions are re-registered, exactly as for a
restarted host, because the host forgot this gateway's interest when the stream closed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from actors.channel import encode_requests, unpack
from actors.channel_auth import ChannelAuth
from actors.framing import take_over
from protocols.wire import MAX_FRAME, Reply, WireError, answer, host_item_from_wire

log = logging.getLogger("syncopate.gateway")


class StreamTransport:
    """Streams by host slot. `handles` are the first `n_hosts` slots' Ray handles; a slot beyond
    them (a host added at runtime, in the membership view) is found through `resolve(slot)`."""

    def __init__(self, gateway_id: str, handles: list | dict, secret: str | bytes,
                 receive: Callable[[int, str, list], None], resolve: Callable | None = None,
                 n_hosts: int | None = None) -> None:
        self.gateway_id = gateway_id
        self.handles: dict = dict(handles) if isinstance(handles, dict) else dict(enumerate(handles))
        # The deployment's first slot count (routing before any view); some may be gone (removed).
        self._n_hosts = len(self.handles) if n_hosts is None else n_hosts
        self.resolve = resolve                   # async slot -> handle
        self.auth = ChannelAuth(secret)
        self.receive = receive
        self.on_reset: Callable[[int], None] = lambda host: None     # same host, new stream
        self.on_lost: Callable[[int], None] = lambda host: None      # a stream closed
        self.writers: dict[int, asyncio.StreamWriter | None] = {}
        self.incarnations: dict[int, str | None] = {}
        self._readers: dict[int, asyncio.Task] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def n_hosts(self) -> int:
        return self._n_hosts

    def connected(self, host: int) -> bool:
        w = self.writers.get(host)
        return w is not None and not w.is_closing()

    async def start(self) -> None:
        for i in sorted(self.handles):
            await self._connect(i)

    async def close(self) -> None:
        for i, w in list(self.writers.items()):
            if self._readers.get(i) is not None:
                self._readers[i].cancel()
            if w is not None:
                w.close()

    async def _handle(self, host: int):
        handle = self.handles.get(host)
        if handle is None:
            if self.resolve is None:
                raise ConnectionError(f"no host {host}")
            handle = self.handles[host] = await self.resolve(host)
        return handle

    async def _connect(self, host: int) -> str:
        async with self._locks.setdefault(host, asyncio.Lock()):
            w = self.writers.get(host)
            if w is not None and not w.is_closing():
                return self.incarnations[host]
            info = await (await self._handle(host)).ready.remote()
            reader, writer = await asyncio.open_connection(info["addr"][0], info["addr"][1])
            try:
                # Nothing is trusted (or read as a batch) until the host proved the channel secret.
                ack = await self.auth.connect(reader, writer, self.gateway_id, host)
            except BaseException:
                writer.transport.abort()
                raise
            previous = self.incarnations.get(host)
            self.incarnations[host] = ack["incarnation"]
            self.writers[host] = writer
            self._readers[host] = asyncio.get_running_loop().create_task(self._read(host, reader, writer))
            if previous is not None and previous == ack["incarnation"]:
                # Same host process, new stream: it dropped our interest with the old stream.
                self.on_reset(host)
            return ack["incarnation"]

    async def _read(self, host: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        inc = self.incarnations[host]
        def on_frame(body: bytes) -> None:
            # decoded and handed on where the bytes arrive (actors/framing.py), in stream order
            self.receive(host, inc, _host_items(unpack(body)))
        try:
            # the stream's end: its close, or what on_frame raised (the transport is closed then)
            await take_over(reader, writer, on_frame, MAX_FRAME)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("stream to host %d closed", host)
        except WireError as err:
            log.error("stream to host %d: undecodable frame (%s); closing it", host, err.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream to host %d failed", host)
        finally:
            current = self.writers.get(host) is writer
            if current:
                self.writers[host] = None
            writer.close()
            if current:
                # What was in flight on this stream will not be answered. A stream already replaced
                # (ping found a new incarnation) was reported then; reporting it again would fail
                # requests that went out on the new stream.
                self.on_lost(host)

    def send(self, host: int, requests: list) -> None:
        w = self.writers.get(host)
        if w is None or w.is_closing():
            raise ConnectionError(f"no stream to host {host}")
        frames, refused = encode_requests(requests)
        for frame in frames:
            w.write(frame)
        if refused:
            # Answered here, on a later turn (the caller registers its tokens before sending), as if
            # the host had refused them: the rest of the batch went out.
            inc = self.incarnations[host]
            asyncio.get_running_loop().call_soon(
                self.receive, host, inc, [answer(token, Reply.fail(err)) for token, err in refused])

    async def ping(self, host: int) -> str:
        """The host's incarnation, through Ray (liveness); re-opens a broken stream."""
        inc = await (await self._handle(host)).ping.remote()
        w = self.writers.get(host)
        if w is not None and inc != self.incarnations.get(host):
            w.close()                       # a stream to the dead incarnation: don't wait for its EOF
            self.writers[host] = None
            self.on_lost(host)
            w = None
        if w is None or w.is_closing():
            return await self._connect(host)
        return inc

    async def stats(self, host: int) -> dict:
        return await (await self._handle(host)).stats.remote()


def _host_items(frame) -> list:
    """Typed items (wire.Reply answers, Push, Gap); a host item that does not decode is a bug on the
    host: the stream closes, and what was in flight fails retryably."""
    if not isinstance(frame, list):
        raise WireError("a host frame is a list")
    return [host_item_from_wire(w) for w in frame]
