"""A websocket's data frames handed to their session where the bytes arrive.

aiohttp parses a socket's bytes in the protocol's `data_received` and queues each message; the
handler's task then wakes (a future's result, a `call_soon`, a task step, `receive()`'s checks) to
take it. Under W2 that wake-up was a large part of what a client frame costs the gateway, and it
bought nothing: our sessions answer a frame without awaiting (gateway/ws.py `WsSession.frame`).

`InboxResponse` is aiohttp's `WebSocketResponse` with its message queue replaced by an `Inbox`: a
text or binary message goes straight to the function given to `attach`, from `data_received`, in
the order the peer sent it; every other message (close, ping, pong, errors) still goes through the
queue to the handler's `async for`, which stays the socket's owner: aiohttp answers pings, closes,
and times out the heartbeat exactly as before, and the handler's `finally` runs when it ends.

Before `attach` (the session's hello is not sent yet) data frames wait in order, at most
`EARLY_FRAMES` of them; beyond that the socket stops being read until `attach`, as aiohttp's own
queue pauses a socket whose handler falls behind. After a close frame no data frame is handed on
(RFC 6455 §5.5.1: nothing follows a close).

It relies on aiohttp's `WebSocketDataQueue` (its `feed_data` is a cpdef method a subclass
overrides, C and pure-Python builds alike) and on `_post_start`/`_reader`/`_parser`, not public but
stable across aiohttp 3.x, as gateway/wsframes.py relies on its writer's; tests/test_ws_inbox.py
pins the behaviour.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from aiohttp import WSMessage, WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.web_ws import DEFAULT_CHUNK_SIZE

from gateway.keytables import lazy_defaults

log = logging.getLogger("syncopate.ws")
EARLY_FRAMES = 64
_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
# What an Inbox puts in the queue when its function failed or asked to stop: the handler's loop
# sees a message of type ERROR whose data is one of these.
STOPPED = RuntimeError("the session stopped reading this socket")

OnFrame = Callable[[Any, bool], bool | None]      # (data, is_text) -> True: stop reading


class Inbox(WebSocketDataQueue):
    __slots__ = ("_early", "_on_frame", "_shut")

    def __init__(self, protocol, limit: int, *, loop) -> None:
        super().__init__(protocol, limit, loop=loop)
        self._early: list | None = []          # (data, is_text) waiting for attach
        self._on_frame: OnFrame | None = None
        self._shut = False                     # a close arrived or the session stopped

    def feed_data(self, data, size) -> None:
        kind = data[0]
        if kind is _TEXT or kind is _BINARY:
            on_frame = self._on_frame
            if on_frame is not None:
                self._call(on_frame, data[1], kind is _TEXT)
            elif not self._shut:
                early = self._early
                early.append((data[1], kind is _TEXT))
                if len(early) >= EARLY_FRAMES and not self._protocol._reading_paused:
                    self._protocol.pause_reading()
            return                              # else: after a close, or after the session stopped
        if kind is _CLOSE:
            # what came before the close is still handed on (at attach, if it waits); nothing after
            self._shut = True
            self._on_frame = None
        super().feed_data(data, size)

    def _call(self, on_frame: OnFrame, payload, is_text: bool) -> bool:
        """Hand one frame on; True if the handler failed or asked to stop (and so is stopped)."""
        try:
            stop = on_frame(payload, is_text)
        except Exception as exc:                # a bug, not a client's bad frame (those are answered)
            log.exception("a websocket frame's handler failed; closing the socket")
            self._stop(exc)
            return True
        if stop:
            self._stop(STOPPED)
        return bool(stop)

    def _stop(self, why: BaseException) -> None:
        self._shut = True
        self._on_frame = None
        # the handler's loop wakes on this and ends (its `finally` runs as for any other end)
        super().feed_data(WSMessage(WSMsgType.ERROR, why, None), 0)

    def attach(self, on_frame: OnFrame) -> None:
        """From here on every data frame goes to `on_frame`, the waiting ones first, in order."""
        early, self._early = self._early, None       # never used again: nothing held per socket
        if not self._shut:
            self._on_frame = on_frame
        for payload, is_text in early or ():
            if self._call(on_frame, payload, is_text):
                break                           # it failed or stopped: nothing more for it
        if self._protocol._reading_paused:
            self._protocol.resume_reading()


_SLOTTED = lazy_defaults(web.StreamResponse, web.WebSocketResponse)


class InboxResponse(web.WebSocketResponse):
    """A WebSocketResponse whose data frames go to `inbox.attach`'s function (see the module).

    It also keeps aiohttp's lazily assigned attributes in slots (gateway/keytables.py): over a
    socket's life (prepare, heartbeat, close) a WebSocketResponse takes 33 attribute names, more
    than the 30 CPython 3.11 shares among a class's instances, and each socket then carried a dict
    of its own (1.6 KB, `simulations.bench_ws_memory`). The slots start at aiohttp's class
    defaults, so every read sees what aiohttp's class would have given; tests/test_ws_inbox.py
    counts the names left in the shared table."""

    __slots__ = ("inbox", *_SLOTTED)

    def __init__(self, **kwargs) -> None:
        for name, value in _SLOTTED.items():
            setattr(self, name, value)
        self.inbox = None
        super().__init__(**kwargs)

    def _post_start(self, request, protocol, writer) -> None:
        # aiohttp's own (3.14), with an Inbox where it builds its WebSocketDataQueue
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        inbox = Inbox(request._protocol, DEFAULT_CHUNK_SIZE, loop=self._loop)
        self.inbox = self._reader = inbox
        self._parser = WebSocketReader(inbox, self._max_msg_size, compress=bool(self._compress),
                                       decode_text=self._decode_text)
        cb = None if self._heartbeat is None else self._on_data_received
        request.protocol.set_parser(self._parser, data_received_cb=cb)   # feeds bytes already read
        request.protocol.keep_alive(False)
