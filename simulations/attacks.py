"""Attacker clients: one small, bounded attacker per kind of abuse seen on the server (docs/security.md).

    result = await ext_type_frame(target)                    # a harness Target (url + token minting)
    result = await varint_run(target, pid, where="type")     # "type" | "state_vector" | "update"
    result.summary()                                         # what it saw: errors, closes, timings

Every attacker is async, sends a bounded number of frames or requests within a deadline of its own,
talks only to a server on this machine (the target url must be a loopback address: `local_url`
refuses anything else), and returns an `AttackResult`: the error codes it was answered with, the
close codes it saw, and the timings it measured. Nothing here asserts: tests/test_adversarial.py
and the `abuse` scenario (simulations/scenarios/abuse.py) judge the results.

Timings that matter for a verdict are taken so that only the server can make them long: an attack
frame is followed on the same socket by a cheap probe (a ping, or a Yjs SyncStep1), and the server
handles a socket's frames in order, so the probe's answer (or the close) bounds how long the server
spent on the attack frame. `Bystander` is the legitimate client measured beside an attack: closed
loops of single-attempt requests (no retries: a retried HOST_UNAVAILABLE is a failed request here).
"""
from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack
import orjson

from protocols import yjs as ywire
from simulations.client import ClientError, SimClient, new_session, ws_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SYNC_PROBE = bytes([0, 0, 1, 0])        # SyncStep1 with an empty state vector: answered with a SyncStep2


def local_url(url: str) -> str:
    """The url, if it names a server on this machine; attacks never leave the loopback interface."""
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"attacks only target a server on this machine, not {host!r}")
    return url.rstrip("/")


@dataclass
class AttackResult:
    name: str
    sent: int = 0                                        # attack frames / requests / sockets sent
    answered: int = 0                                    # answers of any kind (results, errors, Yjs replies)
    errors: Counter = field(default_factory=Counter)     # error codes the server answered with
    closes: list = field(default_factory=list)           # close codes seen (None: closed without a code)
    timings_ms: dict = field(default_factory=dict)       # named measurements
    counts: dict = field(default_factory=dict)           # anything else it counted
    notes: list = field(default_factory=list)
    duration_s: float = 0.0
    ids: list = field(default_factory=list)              # entity ids it touched (not in the summary)

    def summary(self) -> dict:
        return {"name": self.name, "sent": self.sent, "answered": self.answered, "errors": dict(self.errors),
                "closes": list(self.closes), "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
                "counts": dict(self.counts), "notes": list(self.notes), "duration_s": round(self.duration_s, 3)}


class _Timer:
    def __init__(self, result: AttackResult) -> None:
        self.result = result

    def __enter__(self) -> AttackResult:
        self.t0 = time.perf_counter()
        return self.result

    def __exit__(self, *exc) -> None:
        self.result.duration_s = time.perf_counter() - self.t0


# -- sockets that read in the background ----------------------------------------------------------------
class Socket:
    """An aiohttp websocket whose frames are read by a task into a queue; `closed` resolves with the
    close code (None when the connection just ended)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue = asyncio.Queue()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> Socket:
        ws = await asyncio.wait_for(http.ws_connect(url, max_msg_size=0, autoping=True, heartbeat=None), timeout)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self.frames.put_nowait(msg.data)
                else:
                    break
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(self.ws.close_code)
            self.frames.put_nowait(None)        # wakes a reader waiting on a frame

    async def send(self, data: bytes | str) -> bool:
        """Send one frame; False when the socket is already closing (the server closed it)."""
        try:
            await (self.ws.send_bytes(data) if isinstance(data, bytes) else self.ws.send_str(data))
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return False
        return True

    async def next(self, deadline: float) -> Any:
        """The next frame, or None when the socket closed or the deadline (perf_counter) passed."""
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        try:
            return await asyncio.wait_for(self.frames.get(), left)
        except TimeoutError:
            return None

    async def close(self) -> None:
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except TimeoutError:
            self._reader.cancel()


def _decode(frame: Any) -> dict | None:
    try:
        return orjson.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame, raw=False,
                                                                                 strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError):
        return None


async def app_socket(http: aiohttp.ClientSession, target, user: str, timeout: float = 10.0) -> Socket:
    """An app websocket of `user`, past its hello."""
    sock = await Socket.open(http, ws_url(local_url(target.url)) + f"?token={target.token(user)}", timeout)
    deadline = time.perf_counter() + timeout
    while True:
        frame = await sock.next(deadline)
        if frame is None:
            await sock.close()
            raise ClientError("CONNECTION_LOST", f"no hello (closed with {sock.ws.close_code})")
        msg = _decode(frame)
        if msg and msg.get("type") == "hello":
            return sock


async def answer_to(sock: Socket, rid: Any, deadline: float) -> dict | None:
    """The result or error frame answering request `rid` (pushes are skipped), or None (closed / late)."""
    while True:
        frame = await sock.next(deadline)
        if frame is None:
            return None
        msg = _decode(frame)
        if msg and msg.get("type") in ("result", "error", "pong") and msg.get("id") == rid:
            return msg


class YjsSocket(Socket):
    @classmethod
    async def join(cls, http: aiohttp.ClientSession, target, user: str, pid: str, timeout: float = 10.0) -> YjsSocket:
        """A Yjs socket on playlist `pid`, past the server's SyncStep1 (the join is done), or closed
        (a refusal: see `closed`)."""
        url = ws_url(local_url(target.url), f"/v1/yjs/playlists/{pid}") + f"?token={target.token(user)}"
        sock = await cls.open(http, url, timeout)
        deadline = time.perf_counter() + timeout
        while True:
            frame = await sock.next(deadline)
            if frame is None or (isinstance(frame, bytes) and frame[:2] == b"\x00\x00"):
                sock.joined = frame is not None
                return sock

    async def joined_or_raise(self) -> YjsSocket:
        if not self.joined:
            await self.close()
            raise ClientError("CONNECTION_LOST", f"the Yjs join was refused (close {self.ws.close_code})")
        return self

    async def probe(self, deadline: float) -> str:
        """Send a SyncStep1 and wait for its SyncStep2: "answered", "closed" or "late"."""
        if not await self.send(SYNC_PROBE):
            return "closed"
        while True:
            frame = await self.next(deadline)
            if frame is None:
                return "closed" if self.closed.done() else "late"
            if isinstance(frame, bytes) and frame[:2] == b"\x00\x01":
                return "answered"


async def close_code(sock: Socket, timeout_s: float = 2.0) -> Any:
    """The close code of a socket seen closing (a send can fail before the close frame is read)."""
    try:
        return await asyncio.wait_for(asyncio.shield(sock.closed), timeout_s)
    except TimeoutError:
        return None


async def _outcome_after(sock: YjsSocket, result: AttackResult, t0: float, deadline: float, label: str) -> None:
    """After an attack frame: the probe's answer or the close, and how long after the attack it came."""
    outcome = await sock.probe(deadline)
    result.timings_ms[label] = (time.perf_counter() - t0) * 1000
    result.counts[f"{label}:outcome"] = outcome
    if outcome == "answered":
        result.answered += 1
    elif outcome == "closed":
        result.closes.append(await close_code(sock))


# -- the legitimate client measured beside an attack ------------------------------------------------------
class Bystander:
    """Closed loops of single-attempt requests on one app socket until stopped: every latency and
    every failure (no retries) while an attack runs on the same gateway."""

    def __init__(self, target, user: str, requests: list[tuple[str, dict]], *, loops: int = 4,
                 timeout_s: float = 5.0, rate: float = 100.0) -> None:
        self.target, self.user, self.requests = target, user, requests
        self.loops, self.timeout_s = loops, timeout_s
        self.interval_s = loops / rate        # a legitimate client stays under the socket's rate limit
        self.latencies_ms: list[float] = []
        self.errors: Counter = Counter()
        self.client: SimClient | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> Bystander:
        self.client = SimClient(local_url(self.target.url), self.target.token(self.user), reconnect=False,
                                name=f"bystander-{self.user}")
        await self.client.connect()
        self._tasks = [asyncio.get_running_loop().create_task(self._loop(i)) for i in range(self.loops)]
        return self

    async def _loop(self, i: int) -> None:
        k = i
        while not self._stop.is_set():
            mtype, payload = self.requests[k % len(self.requests)]
            k += 1
            started = time.perf_counter()
            try:
                res = await self.client.request(mtype, payload, timeout=self.timeout_s)
                self.latencies_ms.append(res.ms)
            except ClientError as err:
                self.errors[err.code] += 1
                if err.code == "CONNECTION_LOST":
                    return
            # pacing (think time), not synchronisation: `rate` requests a second over all loops
            left = self.interval_s - (time.perf_counter() - started)
            if left > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), left)
                except TimeoutError:
                    pass

    def mark(self) -> int:
        """Where the samples of a window start (see `window`)."""
        return len(self.latencies_ms)

    def window(self, since: int) -> list[float]:
        return self.latencies_ms[since:]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.close()


# -- the attackers ------------------------------------------------------------------------------------------
async def ext_type_frame(target, user: str, pid: str, *, http: aiohttp.ClientSession,
                         timeout_s: float = 5.0) -> AttackResult:
    """Binary frames with a msgpack ExtType inside: as the entity id, and beside a valid id (that one
    reaches the host over the gateway<->host stream today). Then a ping on the same socket."""
    with _Timer(AttackResult("ext_type_frame")) as r:
        sock = await app_socket(http, target, user)
        try:
            frames = {"ext-as-id": {"type": "playlist.get", "id": 1, "payload": {"id": msgpack.ExtType(1, b"\xc0")}},
                      "ext-beside-id": {"type": "playlist.get", "id": 2,
                                        "payload": {"id": pid, "x": msgpack.ExtType(1, b"\xc0")}}}
            for label, frame in frames.items():
                t0 = time.perf_counter()
                if not await sock.send(msgpack.packb(frame, use_bin_type=True)):
                    break
                r.sent += 1
                ans = await answer_to(sock, frame["id"], t0 + timeout_s)
                r.timings_ms[label] = (time.perf_counter() - t0) * 1000
                if ans is None:
                    r.counts[f"{label}:code"] = None
                    continue
                r.answered += 1
                code = (ans.get("error") or {}).get("code") if ans.get("type") == "error" else "result"
                r.counts[f"{label}:code"] = code
                if ans.get("type") == "error":
                    r.errors[code] += 1
            r.counts["open_after"] = await sock.send(msgpack.packb({"type": "ping", "id": "after"}, use_bin_type=True)) \
                and (await answer_to(sock, "after", time.perf_counter() + timeout_s)) is not None
            if sock.closed.done():
                r.closes.append(sock.closed.result())
        finally:
            await sock.close()
    return r


def varint_frame(where: str, run_bytes: int) -> bytes:
    """A Yjs frame whose varint is a `run_bytes` long run of 0xFF (then one terminating byte):
    as the message type, as a SyncStep1's state vector, or as an update (SyncStep2 / Update)."""
    run = b"\xff" * run_bytes + b"\x01"
    if where == "type":
        return run
    if where == "state_vector":
        return bytes([0, 0]) + ywire.write_var_uint(len(run)) + run
    if where == "update":
        return bytes([0, 2]) + ywire.write_var_uint(len(run)) + run
    raise ValueError(where)


async def varint_run(target, user: str, pid: str, *, where: str, run_bytes: int = 200_000,
                     http: aiohttp.ClientSession, timeout_s: float = 30.0) -> AttackResult:
    """One Yjs frame with a quadratic varint, then a SyncStep1 probe: how long until the server
    answered the probe (it handled the attack frame first) or closed the socket."""
    with _Timer(AttackResult(f"varint_run:{where}")) as r:
        sock = await (await YjsSocket.join(http, target, user, pid)).joined_or_raise()
        try:
            t0 = time.perf_counter()
            r.sent += await sock.send(varint_frame(where, run_bytes))
            await _outcome_after(sock, r, t0, t0 + timeout_s, "to_close_or_probe_answer")
        finally:
            await sock.close()
    return r


class RawWebSocket:
    """A websocket written by hand over a socket with a small receive buffer, so that a client that
    never reads really stops reading: nothing in this process drains the server's frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str, *, rcvbuf: int = 4096, timeout: float = 10.0) -> RawWebSocket:
        u = urlsplit(local_url(url))
        sock = socket.socket(socket.AF_INET6 if u.hostname == "::1" else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (u.hostname, u.port or 80)), timeout)
        # a small StreamReader limit: asyncio stops reading the transport once it holds 2 x limit
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + ("?" + u.query if u.query else "")
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            writer.close()
            raise ClientError("CONNECTION_LOST", f"upgrade refused: {status[:80]!r}")
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def _send(self, opcode: int, data: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(data)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(head + mask + masked)

    async def drain_until_close(self, deadline: float) -> tuple[int | None, int, bool]:
        """Read (and discard) what the server sent: (close code or None, bytes read, ended)."""
        total = 0
        try:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None, total, False
                head = await asyncio.wait_for(self.reader.readexactly(2), left)
                n = head[1] & 0x7F
                if n == 126:
                    n = struct.unpack(">H", await self.reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", await self.reader.readexactly(8))[0]
                body = await asyncio.wait_for(self.reader.readexactly(n), max(0.01, deadline - time.perf_counter()))
                total += 2 + n
                if head[0] & 0x0F == 0x8:
                    return (struct.unpack(">H", body[:2])[0] if len(body) >= 2 else None), total, True
        except (asyncio.IncompleteReadError, ConnectionError):
            return None, total, True
        except TimeoutError:
            return None, total, False

    def close(self) -> None:
        self.writer.close()


async def slow_reader(target, user: str, pid: str, *, subscribes: int = 100, interval_s: float = 0.0,
                      timeout_s: float = 10.0) -> AttackResult:
    """A websocket that never reads while it re-subscribes to a large playlist: every full answer is
    queued on the gateway. At the end it reads what is left, to see whether the server closed it.
    `interval_s` spaces the subscribes (pacing), so they are not refused as too many in flight at
    once but pile up as answers the socket never reads."""
    with _Timer(AttackResult("slow_reader")) as r:
        ws = await RawWebSocket.connect(ws_url(local_url(target.url)) + f"?token={target.token(user)}")
        try:
            for i in range(subscribes):
                ws.send_text(orjson.dumps({"id": i, "type": "subscribe",
                                           "payload": {"entity": f"playlist:{pid}"}}).decode())
                r.sent += 1
                await ws.writer.drain()
                if interval_s:
                    await asyncio.sleep(interval_s)
            r.counts["sent_at_s"] = round(time.perf_counter(), 3)
        except (ConnectionError, OSError) as exc:
            r.notes.append(f"send failed after {r.sent}: {type(exc).__name__}")
        r.counts["ws"] = ws              # the caller reads the server's memory, then calls finish_slow_reader
    return r


async def finish_slow_reader(r: AttackResult, timeout_s: float = 10.0) -> AttackResult:
    """Read what the server queued for the slow reader (or its close) and close it."""
    ws: RawWebSocket = r.counts.pop("ws")
    t0 = time.perf_counter()
    code, read, ended = await ws.drain_until_close(t0 + timeout_s)
    r.timings_ms["drain"] = (time.perf_counter() - t0) * 1000
    r.counts["bytes_read_after"] = read
    r.counts["closed_by_server"] = ended
    if ended:
        r.closes.append(code)
    ws.close()
    return r


async def awareness_flood(target, user: str, pid: str, *, clients: int = 5_000, per_frame: int = 100,
                          state_bytes: int = 2_000, joiner: str | None = None, http: aiohttp.ClientSession,
                          timeout_s: float = 10.0) -> AttackResult:
    """Awareness updates for `clients` distinct client ids with `state_bytes` of state each, sent
    `per_frame` entries a frame (within the frame rate limit), then a SyncStep1 probe; with `joiner`,
    what a new Yjs client of that user is sent as awareness while the flooding socket is still open
    (the server forgets a socket's clients when it closes)."""
    with _Timer(AttackResult("awareness_flood")) as r:
        sock = await (await YjsSocket.join(http, target, user, pid)).joined_or_raise()
        try:
            state = orjson.dumps({"user": {"name": "x" * max(0, state_bytes - 20)}}).decode()
            t0 = time.perf_counter()
            rng = random.Random(7)
            base = rng.randrange(1 << 20, 1 << 30)
            for start in range(0, clients, per_frame):
                if sock.closed.done() or time.perf_counter() - t0 > timeout_s:
                    break
                entries = [(base + k, 1, state) for k in range(start, min(clients, start + per_frame))]
                if not await sock.send(ywire.awareness(ywire.encode_awareness(entries))):
                    break
                r.sent += 1
                await asyncio.sleep(0.006)       # pacing: stay under the 200 frames/s rate limit
            r.counts["entries_sent"] = min(clients, r.sent * per_frame)
            await _outcome_after(sock, r, t0, time.perf_counter() + timeout_s, "to_close_or_probe_answer")
            if joiner is not None:
                r.counts["joiner_entries"], r.counts["joiner_bytes"] = await joiner_awareness(
                    target, joiner, pid, http=http)
        finally:
            await sock.close()
    return r


async def joiner_awareness(target, user: str, pid: str, *, http: aiohttp.ClientSession,
                           timeout_s: float = 5.0) -> tuple[int, int]:
    """What a new Yjs client of `pid` is sent as awareness on joining: (entries, bytes)."""
    url = ws_url(local_url(target.url), f"/v1/yjs/playlists/{pid}") + f"?token={target.token(user)}"
    sock = await Socket.open(http, url)
    try:
        deadline = time.perf_counter() + timeout_s
        await sock.ws.send_bytes(bytes([ywire.QUERY_AWARENESS]))
        entries = size = 0
        while True:
            frame = await sock.next(deadline)
            if frame is None:
                return entries, size
            if isinstance(frame, bytes) and frame[:1] == b"\x01":
                for msg in ywire.parse_frame(frame):
                    entries += len(ywire.parse_awareness(msg.payload))
                size += len(frame)
                return entries, size
    finally:
        await sock.close()


async def subscribe_storm(target, user: str, pid: str, *, subscribes: int = 300, http: aiohttp.ClientSession,
                          timeout_s: float = 30.0) -> AttackResult:
    """`subscribes` full subscribes of one large playlist sent at once on one socket (within the
    burst), every answer read: how many were answered, refused (with which code), how fast."""
    with _Timer(AttackResult("subscribe_storm")) as r:
        sock = await app_socket(http, target, user)
        try:
            t0 = time.perf_counter()
            for i in range(subscribes):
                if not await sock.send(orjson.dumps({"id": i, "type": "subscribe",
                                                     "payload": {"entity": f"playlist:{pid}"}}).decode()):
                    break
                r.sent += 1
            deadline = t0 + timeout_s
            left = set(range(subscribes))
            while left:
                frame = await sock.next(deadline)
                if frame is None:
                    break
                msg = _decode(frame)
                if not msg or msg.get("id") not in left:
                    continue
                left.discard(msg["id"])
                r.answered += 1
                if msg.get("type") == "error":
                    r.errors[(msg.get("error") or {}).get("code")] += 1
            r.timings_ms["all_answered"] = (time.perf_counter() - t0) * 1000
            r.counts["unanswered"] = len(left)
            if sock.closed.done():
                r.closes.append(sock.closed.result())
        finally:
            await sock.close()
    return r


async def unknown_ids(target, user: str, *, n: int = 50, http: aiohttp.ClientSession,
                      timeout_s: float = 10.0) -> AttackResult:
    """Reads, subscribes and Yjs joins of `n` random never-created playlist ids each, and the REST
    GET of as many: what each was answered."""
    with _Timer(AttackResult("unknown_ids")) as r:
        rng = random.SystemRandom()
        ids = ["zz" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20))
               for _ in range(4 * n)]
        r.ids = ids
        sock = await app_socket(http, target, user)
        try:
            deadline = time.perf_counter() + timeout_s
            for i, pid in enumerate(ids[:n]):
                await sock.ws.send_str(orjson.dumps({"id": f"g{i}", "type": "playlist.get",
                                                     "payload": {"id": pid}}).decode())
            r.sent += n
            left = {f"g{i}" for i in range(n)}

            async def collect() -> None:
                while left:
                    frame = await sock.next(deadline)
                    if frame is None:
                        return
                    msg = _decode(frame)
                    if not msg or msg.get("id") not in left:
                        continue
                    left.discard(msg["id"])
                    r.answered += 1
                    kind = "ws.get" if msg["id"].startswith("g") else "ws.subscribe"
                    code = (msg.get("error") or {}).get("code") if msg.get("type") == "error" else "result"
                    r.errors[f"{kind}:{code}"] += 1

            await collect()
            # Subscribes one at a time: a socket may have only a few in flight (its subscribe
            # budget), and what is measured here is what an answered subscribe leaves behind.
            for i, pid in enumerate(ids[n:2 * n]):
                await sock.ws.send_str(orjson.dumps({"id": f"s{i}", "type": "subscribe",
                                                     "payload": {"entity": f"playlist:{pid}"}}).decode())
                r.sent += 1
                left.add(f"s{i}")
                await collect()
            r.counts["ws_unanswered"] = len(left)
        finally:
            await sock.close()
        headers = {"Authorization": f"Bearer {target.token(user)}"}
        for pid in ids[2 * n:3 * n]:
            async with http.get(f"{local_url(target.url)}/v1/playlists/{pid}", headers=headers) as resp:
                body = await resp.json(content_type=None)
                r.sent += 1
                r.answered += 1
                r.errors[f"rest.get:{resp.status}:{((body or {}).get('error') or {}).get('code')}"] += 1
        for pid in ids[3 * n:]:
            sock = await YjsSocket.join(http, target, user, pid)
            r.sent += 1
            try:
                code = await asyncio.wait_for(asyncio.shield(sock.closed), timeout_s)
            except TimeoutError:
                code = "open"
            r.closes.append(code)
            await sock.close()
    return r


async def yjs_oversize(target, user: str, pid: str, *, frame_bytes: int, http: aiohttp.ClientSession,
                       timeout_s: float = 10.0) -> AttackResult:
    """One Yjs update frame of `frame_bytes` (over the gateway's frame limit, under its hard cap),
    then a SyncStep1 probe: closed (with which code), or the probe answered (the frame was dropped)."""
    with _Timer(AttackResult("yjs_oversize")) as r:
        sock = await (await YjsSocket.join(http, target, user, pid)).joined_or_raise()
        try:
            body = b"\x00" * (frame_bytes - 8)
            t0 = time.perf_counter()
            r.sent += await sock.send(bytes([0, 2]) + ywire.write_var_uint(len(body)) + body)
            await _outcome_after(sock, r, t0, t0 + timeout_s, "to_close_or_probe_answer")
        finally:
            await sock.close()
    return r


async def yjs_rate(target, user: str, pid: str, *, frames: int, http: aiohttp.ClientSession,
                   timeout_s: float = 5.0) -> AttackResult:
    """`frames` cheap Yjs frames (QueryAwareness) as fast as the socket takes them (over the rate
    limit when frames > the burst), then SyncStep1 probes until one is answered or the socket is
    closed (a probe sent while the bucket is empty is itself refused, so one probe is not enough)."""
    with _Timer(AttackResult("yjs_rate")) as r:
        sock = await (await YjsSocket.join(http, target, user, pid)).joined_or_raise()
        try:
            t0 = time.perf_counter()
            for _ in range(frames):
                if sock.closed.done() or not await sock.send(bytes([ywire.QUERY_AWARENESS])):
                    break
                r.sent += 1
            deadline = t0 + timeout_s
            outcome = "late"
            for _ in range(50):                      # bounded: one probe per 100 ms of the deadline
                outcome = await sock.probe(min(deadline, time.perf_counter() + 0.1))
                if outcome != "late" or time.perf_counter() >= deadline:
                    break
            r.timings_ms["to_close_or_probe_answer"] = (time.perf_counter() - t0) * 1000
            r.counts["to_close_or_probe_answer:outcome"] = outcome
            if outcome == "answered":
                r.answered += 1
            elif outcome == "closed":
                r.closes.append(await close_code(sock))
        finally:
            await sock.close()
    return r


async def long_request_line(target, *, query_bytes: int = 100_000, timeout_s: float = 10.0) -> AttackResult:
    """An HTTP request line with a `query_bytes` query string, over a plain TCP socket: the status,
    content type and body the server answers with."""
    with _Timer(AttackResult("long_request_line")) as r:
        u = urlsplit(local_url(target.url))
        reader, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port or 80), timeout_s)
        try:
            t0 = time.perf_counter()
            writer.write(f"GET /v1/search?type=track&q={'a' * query_bytes} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                         f"Authorization: Bearer {target.token('abuse-line')}\r\nConnection: close\r\n\r\n".encode())
            r.sent += 1
            try:
                await writer.drain()
            except ConnectionError:
                pass                      # the server may answer and close before it read everything
            raw = b""
            try:
                while len(raw) < 1 << 20:
                    chunk = await asyncio.wait_for(reader.read(65536), max(0.01, t0 + timeout_s - time.perf_counter()))
                    if not chunk:
                        break
                    raw += chunk
            except (ConnectionError, TimeoutError):
                pass
            r.timings_ms["answer"] = (time.perf_counter() - t0) * 1000
            head, _, body = raw.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2) if lines and lines[0] else []
            r.counts["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            r.counts["content_type"] = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                                             if ln.lower().startswith("content-type:")), None)
            r.counts["body"] = body[:4000].decode("utf-8", "replace")
            if r.counts["status"] is not None:
                r.answered += 1
        finally:
            writer.close()
    return r


async def many_sockets(target, user: str, *, sockets: int = 110, http: aiohttp.ClientSession,
                       timeout_s: float = 10.0) -> AttackResult:
    """`sockets` app websockets for one user, opened at once: how many got a hello, how many were
    refused at the upgrade (HTTP status) or closed before a hello (code, and the error frame)."""
    with _Timer(AttackResult("many_sockets")) as r:
        url = ws_url(local_url(target.url)) + f"?token={target.token(user)}"
        opened: list[Socket] = []
        own = new_session()            # no per-host connection cap (aiohttp's default is 100)

        async def one() -> None:
            try:
                sock = await Socket.open(own, url, timeout_s)
            except aiohttp.WSServerHandshakeError as exc:
                r.errors[f"http:{exc.status}"] += 1
                return
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                r.errors[f"connect:{type(exc).__name__}"] += 1
                return
            opened.append(sock)
            deadline = time.perf_counter() + timeout_s
            while True:
                frame = await sock.next(deadline)
                if frame is None:
                    r.closes.append(sock.closed.result() if sock.closed.done() else "no hello")
                    return
                msg = _decode(frame) or {}
                if msg.get("type") == "hello":
                    r.counts["hello"] = r.counts.get("hello", 0) + 1
                    return
                if msg.get("type") == "error":
                    r.errors[(msg.get("error") or {}).get("code")] += 1

        r.sent = sockets
        await asyncio.gather(*(one() for _ in range(sockets)))
        r.answered = r.counts.get("hello", 0)
        await asyncio.gather(*(s.close() for s in opened))
        await own.close()
    return r


# -- what the attacks need, and what the server says about them -------------------------------------------
async def large_playlist(client: SimClient, pid: str, tracks: list[str], entries: int = 10_000) -> int:
    """Create playlist `pid` (public) owned by the client's user with `entries` entries, 100 uris
    per add (the per-request limit). Returns its version."""
    await client.call("playlist.create", {"id": pid, "name": "abuse: large", "public": True})
    version = 0
    for start in range(0, entries, 100):
        uris = [tracks[(start + k) % len(tracks)] for k in range(min(100, entries - start))]
        version = (await client.call("playlist.add", {"id": pid, "uris": uris}, timeout=30)).version
    return version


LIMIT_WORDS = ("budget", "limit", "refused", "dropped", "rejected", "closed", "rate")


def parse_metrics(text: str, words: tuple[str, ...] = LIMIT_WORDS) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} for every sample whose metric name contains one of
    `words` (every budget and limit counter the server exports)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if any(w in name for w in words):
            try:
                out[series] = float(value)
            except ValueError:
                continue
    return out


async def scrape_limits(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{local_url(url)}/metrics") as resp:
        return parse_metrics(await resp.text())
