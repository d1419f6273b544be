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

from actors.channel import encode_requests, read_frame
from actors.channel_auth import ChannelAuth
from protocols.wire import Reply, WireError, answer, host_item_from_wire

log = logging.getLogger("syncopate.gateway")


class StreamTransport:
    def __init__(self, gateway_id: str, handles: list, secret: str | bytes,
                 receive: Callable[[int, str, list], None]) -> None:
        self.gateway_id = gateway_id
        self.handles = handles
        self.auth = ChannelAuth(secret)
        self.receive = receive
        self.on_reset: Callable[[int], None] = lambda host: None     # same host, new stream
        self.on_lost: Callable[[int], None] = lambda host: None      # a stream closed
        self.writers: list[asyncio.StreamWriter | None] = [None] * len(handles)
        self.incarnations: list[str | None] = [None] * len(handles)
        self._readers: list[asyncio.Task | None] = [None] * len(handles)
        self._locks = [asyncio.Lock() for _ in handles]

    @property
    def n_hosts(self) -> int:
        return len(self.handles)

    async def start(self) -> None:
        for i in range(self.n_hosts):
            await self._connect(i)

    async def close(self) -> None:
        for i, w in enumerate(self.writers):
            if self._readers[i] is not None:
                self._readers[i].cancel()
            if w is not None:
                w.close()

    async def _connect(self, host: int) -> str:
        async with self._locks[host]:
            w = self.writers[host]
            if w is not None and not w.is_closing():
                return self.incarnations[host]
            info = await self.handles[host].ready.remote()
            reader, writer = await asyncio.open_connection(info["addr"][0], info["addr"][1])
            try:
                # Nothing is trusted (or read as a batch) until the host proved the channel secret.
                ack = await self.auth.connect(reader, writer, self.gateway_id, host)
            except BaseException:
                writer.transport.abort()
                raise
            previous = self.incarnations[host]
            self.incarnations[host] = ack["incarnation"]
            self.writers[host] = writer
            self._readers[host] = asyncio.get_running_loop().create_task(self._read(host, reader, writer))
            if previous is not None and previous == ack["incarnation"]:
                # Same host process, new stream: it dropped our interest with the old stream.
                self.on_reset(host)
            return ack["incarnation"]

    async def _read(self, host: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        inc = self.incarnations[host]
        try:
            while True:
                frame = await read_frame(reader)
                if not isinstance(frame, list):
                    raise WireError("a host frame is a list")
                # Typed items (wire.Reply answers, Push, Gap); a host item that does not decode is a
                # bug on the host: the stream closes, and what was in flight fails retryably.
                self.receive(host, inc, [host_item_from_wire(w) for w in frame])
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("stream to host %d closed", host)
        except WireError as err:
            log.error("stream to host %d: undecodable frame (%s); closing it", host, err.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream to host %d failed", host)
        finally:
            current = self.writers[host] is writer
            if current:
                self.writers[host] = None
            writer.close()
            if current:
                # What was in flight on this stream will not be answered. A stream already replaced
                # (ping found a new incarnation) was reported then; reporting it again would fail
                # requests that went out on the new stream.
                self.on_lost(host)

    def send(self, host: int, requests: list) -> None:
        w = self.writers[host]
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
        inc = await self.handles[host].ping.remote()
        w = self.writers[host]
        if w is not None and inc != self.incarnations[host]:
            w.close()                       # a stream to the dead incarnation: don't wait for its EOF
            self.writers[host] = None
            self.on_lost(host)
            w = None
        if w is None or w.is_closing():
            return await self._connect(host)
        return inc

    async def stats(self, host: int) -> dict:
        return await self.handles[host].stats.remote()
