"""The host channel's handshake (actors/channel.py, gateway/stream_transport.py): mutual
challenge-response over fresh nonces, before either side trusts the stream.

A static proof (an HMAC of the gateway id alone) can be replayed by anyone who saw one stream
open; here each side proves the secret over a nonce the *other* side just chose, so a recorded
transcript proves nothing on the next connection. The host proves itself too: a gateway sends
commands carrying principals to whatever answers at the address Ray gave it, so it must not trust
an impostor on that port.

  host -> gateway:  {"hello": "syncopate-channel", "v": 1, "nonce": Nh}     (no incarnation yet)
  gateway -> host:  {"gateway": id, "nonce": Ng, "proof": HMAC(Kg, "gw" | Nh | Ng | id)}
  host -> gateway:  {"incarnation": inc, "host": index,
                     "proof": HMAC(Kh, "host" | Ng | Nh | inc | index | id)}

Nonces are 32 random bytes; the fields of a MAC are length-prefixed, so no two field lists hash
alike. Kg and Kh are derived from the channel secret with HKDF-SHA256 (RFC 5869), one per
purpose, so neither proof can stand in for the other and the secret itself is never a MAC key.

Until the handshake completes a frame may be at most HELLO_LIMIT bytes and the whole exchange
must finish within the deadline: a peer that claims a bigger frame, sends garbage, proves the
wrong thing or stalls is aborted (RST) without another byte read. Only then does the channel's
steady-state reader (64 MiB frames) take over. Handshake frames are plain msgpack maps of str,
bytes and int, on the channel's framing (4-byte big-endian length + body).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import struct
from pathlib import Path

import msgpack

log = logging.getLogger("syncopate.channel")

HEADER = struct.Struct(">I")
HELLO_LIMIT = 4096                 # bytes in one frame before authentication
HANDSHAKE_TIMEOUT_S = 5.0          # the whole exchange, from accept (or connect) to proven
NONCE_BYTES = 32
MAX_PENDING = 256                  # unauthenticated streams a host holds at once; more are aborted
MAX_ID = 128                       # characters in a gateway id or an incarnation
VERSION = 1
GREETING = "syncopate-channel"


class HandshakeError(ConnectionError):
    """The peer did not authenticate (or spoke something else); the stream was not trusted."""


def hkdf(secret: bytes, info: bytes, salt: bytes = b"syncopate-channel-v1") -> bytes:
    """HKDF-SHA256 (RFC 5869), one 32-byte block: extract with the salt, expand with `info`."""
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _mac(key: bytes, *fields: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for f in fields:
        h.update(HEADER.pack(len(f)))
        h.update(f)
    return h.digest()


def encode(msg: dict) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


async def read_hello(reader: asyncio.StreamReader, limit: int = HELLO_LIMIT) -> dict:
    """One handshake frame; a header over `limit` is refused before its body is read."""
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if n > limit:
        raise HandshakeError(f"a {n}-byte frame before authentication (limit {limit})")
    body = await reader.readexactly(n)
    try:
        msg = msgpack.unpackb(body, raw=False)
    except Exception:
        raise HandshakeError("a malformed handshake frame") from None
    if not isinstance(msg, dict):
        raise HandshakeError("a handshake frame that is not a map")
    return msg


def _bytes(msg: dict, key: str, size: int) -> bytes:
    v = msg.get(key)
    if not isinstance(v, bytes) or len(v) != size:
        raise HandshakeError(f"handshake field {key!r} is not {size} bytes")
    return v


def _text(msg: dict, key: str) -> str:
    v = msg.get(key)
    if not isinstance(v, str) or not 0 < len(v) <= MAX_ID:
        raise HandshakeError(f"handshake field {key!r} is not a string of 1 to {MAX_ID} characters")
    return v


def read_key_file(path: str | Path) -> str:
    """A secret from its file (a key file is created by the driver, gateway/auth.py, never here:
    an actor on a node without the file must fail, not invent a key no one else has)."""
    p = Path(path)
    try:
        value = p.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"no secret file {p}: it must exist on every node, at the same path") from None
    if not value:
        raise ValueError(f"the secret file {p} is empty")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("secret file %s is readable by other users; it should be 0600", p)
    return value


def _peer(writer: asyncio.StreamWriter) -> str:
    p = writer.get_extra_info("peername")
    return f"{p[0]}:{p[1]}" if p else "?"


class ChannelAuth:
    """One side's keys and limits; `accept` runs on the host, `connect` on the gateway."""

    def __init__(self, secret: str | bytes, *, handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                 max_pending: int = MAX_PENDING) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < 32:
            raise ValueError("the channel secret must be at least 32 bytes")
        self._gateway_key = hkdf(raw, b"gateway proof")
        self._host_key = hkdf(raw, b"host proof")
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self._pending = 0

    def gateway_proof(self, host_nonce: bytes, gateway_nonce: bytes, gateway_id: str) -> bytes:
        return _mac(self._gateway_key, b"gw", host_nonce, gateway_nonce, gateway_id.encode())

    def host_proof(self, gateway_nonce: bytes, host_nonce: bytes, incarnation: str, index: int,
                   gateway_id: str) -> bytes:
        return _mac(self._host_key, b"host", gateway_nonce, host_nonce, incarnation.encode(),
                    str(index).encode(), gateway_id.encode())

    # -- host side ---------------------------------------------------------------------------
    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     incarnation: str, index: int) -> str | None:
        """The authenticated gateway's id, its answer written; None if the peer was refused.

        A refused peer's transport is aborted here: nothing more is read from it.
        """
        if self._pending >= self.max_pending:
            log.warning("channel: %d streams already authenticating; aborted %s", self._pending, _peer(writer))
            writer.transport.abort()
            return None
        self._pending += 1
        try:
            async with asyncio.timeout(self.handshake_timeout):
                host_nonce = secrets.token_bytes(NONCE_BYTES)
                writer.write(encode({"hello": GREETING, "v": VERSION, "nonce": host_nonce}))
                msg = await read_hello(reader)
                gateway_id = _text(msg, "gateway")
                gateway_nonce = _bytes(msg, "nonce", NONCE_BYTES)
                proof = _bytes(msg, "proof", hashlib.sha256().digest_size)
                if not hmac.compare_digest(proof, self.gateway_proof(host_nonce, gateway_nonce, gateway_id)):
                    raise HandshakeError(f"gateway {gateway_id!r} failed authentication")
                writer.write(encode({"incarnation": incarnation, "host": index,
                                     "proof": self.host_proof(gateway_nonce, host_nonce, incarnation, index,
                                                              gateway_id)}))
                return gateway_id
        except HandshakeError as exc:
            log.warning("channel: refused %s: %s", _peer(writer), exc)
        except TimeoutError:
            log.warning("channel: refused %s: no handshake within %.1f s", _peer(writer), self.handshake_timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("channel: %s left during the handshake", _peer(writer))
        finally:
            self._pending -= 1
        writer.transport.abort()
        return None

    # -- gateway side ------------------------------------------------------------------------
    async def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gateway_id: str,
                      index: int) -> dict:
        """The host's proven answer {"incarnation", "host"}; raises HandshakeError (a
        ConnectionError) if it can't prove the secret or is not host `index`, TimeoutError if it
        stalls. The caller closes the stream on failure."""
        try:
            async with asyncio.timeout(self.handshake_timeout):
                return await self._connect(reader, writer, gateway_id, index)
        except asyncio.IncompleteReadError:
            # The host aborts a gateway it does not believe, without saying why.
            raise HandshakeError(f"the host at {_peer(writer)} closed the stream during the handshake "
                                 "(a different channel secret?)") from None

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gateway_id: str,
                       index: int) -> dict:
        hello = await read_hello(reader)
        if hello.get("hello") != GREETING or hello.get("v") != VERSION:
            raise HandshakeError(f"not a syncopate channel (version {VERSION}) at {_peer(writer)}")
        host_nonce = _bytes(hello, "nonce", NONCE_BYTES)
        gateway_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(encode({"gateway": gateway_id, "nonce": gateway_nonce,
                             "proof": self.gateway_proof(host_nonce, gateway_nonce, gateway_id)}))
        answer = await read_hello(reader)
        incarnation = _text(answer, "incarnation")
        host = answer.get("host")
        proof = _bytes(answer, "proof", hashlib.sha256().digest_size)
        if not isinstance(host, int) or not hmac.compare_digest(
                proof, self.host_proof(gateway_nonce, host_nonce, incarnation, host, gateway_id)):
            raise HandshakeError(f"the host at {_peer(writer)} could not prove the channel secret")
        if host != index:
            raise HandshakeError(f"host {host} answered at the address of host {index}")
        return {"incarnation": incarnation, "host": host}
