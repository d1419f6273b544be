"""Signed stream URLs and the stream manifest a device gets when it becomes the active player
(docs/rights.md "Manifests").

A URL names one (user, device, track, bitrate) until an expiry, and carries an HMAC-SHA256 over
exactly those fields:

    /edge/v1/stream/{track_id}/{kbps}?u={user}&d={device}&e={expiry unix s}&s={signature}
    signature = base64url(HMAC-SHA256(stream key, "syncopate-stream-v1\\n{user}\\n{device}\\n{track_id}\\n{kbps}\\n{expiry}"))

The key is its own secret file (`<data-dir>/stream.key`, 0600, or `--stream-secret-file`), never
the token key: a leaked edge key must not mint tokens, nor the other way round. The edge
(gateway/edge.py) recomputes the signature, checks the expiry, and that the request's token is the
user's and the device's.

The manifest is presentation plus signing, so it lives here, built from the device group's domain
state (the cluster: current track, next_tracks) when the gateway pushes to the active device; the
entity has no clock and holds no keys. Bitrates follow the product (Spotify's tiers): free up to
160 kbps (96, 160), premium up to 320 (96, 160, 320); the product is the socket's live one.
"""
from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from catalog import find_track

STREAM_SECRET_FILE = "stream.key"
EDGE_PREFIX = "/edge/v1/stream"
BITRATES = {"free": (96, 160), "premium": (96, 160, 320)}
ALL_BITRATES = (96, 160, 320)
DEFAULT_TTL_S = 300                 # a URL lives five minutes
REFRESH_AT = 0.8                    # the gateway pushes fresh URLs at 80% of their life
FIRST_CHUNK_BYTES = 64 * 1024       # what a player fetches first (with a Range header)
PREFETCH = 2                        # the next tracks a manifest covers


@dataclass(frozen=True)
class StreamClaim:
    """What a URL says: checked fields, in the order they are signed."""
    user: str
    device: str
    track_id: str
    kbps: int
    expires: int


def _head(user: str, device: str) -> str:
    """The part of a signed message a manifest's nine URLs share."""
    return f"syncopate-stream-v1\n{user}\n{device}\n"


def _signed(head: str, track_id: str, kbps: int, expires: int) -> bytes:
    return f"{head}{track_id}\n{kbps}\n{expires}".encode()


def _message(c: StreamClaim) -> bytes:
    return _signed(_head(c.user, c.device), c.track_id, c.kbps, c.expires)


class StreamSigner:
    def __init__(self, secret: str, ttl_s: int = DEFAULT_TTL_S) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("the stream signing secret must be at least 32 bytes")
        self._key = hashlib.sha256(b"syncopate-stream-key\n" + secret.encode()).digest()
        # HMAC-SHA256 by its definition (RFC 2104), with the two padded-key blocks hashed once here:
        # a signature is then two copies of a SHA-256 state and two short updates, 2.4 us against
        # hmac.digest's 5.0 (OpenSSL 3 looks the digest up on every one-shot call; measured on the
        # project's machine, docs/performance.md "2026-12-02 (afternoon)"). tests/test_stream_edge.py
        # checks it against hmac.digest.
        block = self._key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.ttl_s = ttl_s

    def _mac(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        # base64url without padding: a 32-byte MAC is 43 characters and one "=" (and the newline)
        return binascii.b2a_base64(outer.digest(), newline=False)[:43].decode().replace("+", "-").replace("/", "_")

    def sign(self, c: StreamClaim) -> str:
        return self._mac(_message(c))

    def url(self, c: StreamClaim, qu: str | None = None, qd: str | None = None) -> str:
        """The URL of a claim. `qu`/`qd`: the user and device already percent-encoded (a manifest
        encodes them once for its nine URLs; urlencode was most of a push's cost). The signature is
        base64url and the rest are digits and ids: nothing else needs quoting."""
        qu = quote(c.user, safe="") if qu is None else qu
        qd = quote(c.device, safe="") if qd is None else qd
        return self._url(_head(c.user, c.device), f"?u={qu}&d={qd}&e={c.expires}&s=", c.track_id, c.kbps, c.expires)

    def _url(self, head: str, query: str, track_id: str, kbps: int, expires: int) -> str:
        """`url` from the parts a manifest builds once for all its URLs: the message's `head` and the
        `query` up to its signature."""
        return f"{EDGE_PREFIX}/{track_id}/{kbps}{query}{self._mac(_signed(head, track_id, kbps, expires))}"

    def valid(self, c: StreamClaim, signature: str) -> bool:
        return hmac.compare_digest(self.sign(c).encode(), signature.encode())

    # -- the manifest ----------------------------------------------------------------------------
    def manifest(self, cat: Any, cluster: dict, user: str, device: str, product: str,
                 now: float | None = None, base: str = "") -> dict | None:
        """The `stream` of a push to the active device: the current track and the next PREFETCH,
        each with its bitrates and a signed URL for each, and the first chunk to fetch. None when
        nothing is loaded. `base` prefixes URLs (empty: relative to the gateway)."""
        player = cluster.get("player") or {}
        track = player.get("track")
        if not track or not track.get("uri"):
            return None
        now = time.time() if now is None else now
        expires = int(now) + self.ttl_s
        rates = BITRATES.get(product, BITRATES["free"])
        qu, qd = quote(user, safe=""), quote(device, safe="")
        uris = [track["uri"]] + [u for u in cluster.get("next_tracks", ())[:PREFETCH]]
        tracks = []
        # the signed message's user/device head and the URL's query are built once for the
        # manifest's nine URLs, not per URL
        head = _head(user, device)
        query = f"?u={qu}&d={qd}&e={expires}&s="
        market, explicit = player.get("market"), bool(player.get("explicit_filter"))
        for i, uri in enumerate(uris):
            t = find_track(cat, uri)
            if t is None or t.restriction(market, explicit) is not None:
                continue              # nothing to stream (taken down, or not licensed here)
            urls = {str(k): base + self._url(head, query, t.id, k, expires) for k in rates}
            tracks.append({"uri": uri, "duration_ms": t.duration_ms, "bitrates": list(rates), "urls": urls,
                           "current": i == 0})
        if not tracks:
            return None
        best = str(rates[-1])
        first = tracks[0]
        return {"expires_at": expires, "refresh_at": int(now + self.ttl_s * REFRESH_AT), "format": "audio/wav",
                "tracks": tracks,
                "first_chunk": {"uri": first["uri"], "url": first["urls"][best],
                                "range": f"bytes=0-{FIRST_CHUNK_BYTES - 1}"} if first["current"] else None}
