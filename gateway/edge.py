"""The stand-in edge: `GET /edge/v1/stream/{track_id}/{kbps}?u&d&e&s` serves a track's audio to the
device its URL was signed for (gateway/stream_sign.py, docs/rights.md "Edge").

Checks, in order, each refusal 403 in Spotify's error shape with the stable code STREAM_URL_REFUSED
and `details.why`: a malformed URL (`malformed`), a signature that does not match every signed
field (`signature`), an expired URL (`expired`), a token that is not the URL's user (`user`) or
device (`device`: the token's device id, else the `X-Syncopate-Device` header), a track no longer
available to the user (`unavailable`: taken down, or not licensed in their market). The bearer token
is required (the middleware checks it): a URL that leaks opens nothing by itself.

The audio is generated, deterministic per track: WAV, 8-bit unsigned mono PCM at kbps*125 samples a
second, so the byte rate is exactly the bitrate named (96 kbps: 12 kHz; 160: 20 kHz; 320: 40 kHz).
It is a sequence of half-second notes (a pentatonic scale, picked by blake2b of the track id), each
faded in and out so the joins do not click, as long as the track's duration. Ranges (RFC 9110 14):
one `bytes=a-b`, `a-` or `-n` range -> 206 with Content-Range; a range that starts past the end ->
416 with `Content-Range: bytes */size`; a Range header this does not parse is ignored (200, whole).
"""
from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
import time

from aiohttp import web

from gateway.http import ctx, principal
from gateway.stream_sign import ALL_BITRATES, EDGE_PREFIX, StreamClaim
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import is_id

NOTE_MS = 500
HEADER_BYTES = 44
PITCHES_HZ = (261.63, 293.66, 329.63, 392.00, 440.00, 523.25, 587.33, 659.25)   # C major pentatonic, 2 octaves
FADE_MS = 8
WRITE_CHUNK = 256 * 1024
DEVICE_HEADER = "X-Syncopate-Device"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def setup(app: web.Application) -> None:
    app.router.add_get(EDGE_PREFIX + "/{track_id}/{kbps}", stream)


def _refuse(why: str, msg: str) -> SyncopateError:
    return SyncopateError(ErrorCode.STREAM_URL_REFUSED, msg, why=why)


# -- the audio ------------------------------------------------------------------------------------
def rate_of(kbps: int) -> int:
    return kbps * 125                     # 8-bit mono: one byte a sample


def audio_size(duration_ms: int, kbps: int) -> int:
    return HEADER_BYTES + duration_ms * rate_of(kbps) // 1000


def wav_header(data_bytes: int, rate: int) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8) + b"data" + struct.pack("<I", data_bytes))


@functools.lru_cache(maxsize=64)
def _note(rate: int, pitch: int) -> bytes:
    n = rate * NOTE_MS // 1000
    fade = rate * FADE_MS // 1000
    w = 2 * math.pi * PITCHES_HZ[pitch] / rate
    out = bytearray(n)
    for i in range(n):
        env = min(1.0, i / fade, (n - 1 - i) / fade)
        out[i] = 128 + int(90 * env * math.sin(w * i))
    return bytes(out)


@functools.lru_cache(maxsize=1024)
def _melody(track_id: str) -> bytes:
    return hashlib.blake2b(f"syncopate-tone:{track_id}".encode(), digest_size=32).digest()


def audio_bytes(track_id: str, duration_ms: int, kbps: int, start: int, end: int) -> bytes:
    """Bytes [start, end) of the track's WAV file (header included)."""
    rate = rate_of(kbps)
    size = audio_size(duration_ms, kbps)
    end = min(end, size)
    out = bytearray()
    if start < HEADER_BYTES:
        out += wav_header(size - HEADER_BYTES, rate)[start:end]
        start = HEADER_BYTES
    note_len = rate * NOTE_MS // 1000
    melody = _melody(track_id)
    pos = start - HEADER_BYTES
    last = end - HEADER_BYTES
    while pos < last:
        k, off = divmod(pos, note_len)
        buf = _note(rate, melody[k % len(melody)] % len(PITCHES_HZ))
        take = min(note_len - off, last - pos)
        out += buf[off:off + take]
        pos += take
    return bytes(out)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end exclusive) for one satisfiable range; None: no (usable) Range header, serve all;
    "unsatisfiable": 416."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None                                   # not a form this serves: ignore it (RFC 9110 14.2)
    a, b = m.group(1), m.group(2)
    if not a:                                         # the last n bytes
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(a)
    if start >= size:
        return "unsatisfiable"
    end = size if not b else min(size, int(b) + 1)
    if end <= start:
        return None                                   # b < a: invalid, ignored
    return start, end


# -- the route ----------------------------------------------------------------------------------------
def _claim(request: web.Request) -> tuple[StreamClaim, str]:
    q = request.query
    tid, raw_kbps = request.match_info["track_id"], request.match_info["kbps"]
    try:
        claim = StreamClaim(q["u"], q["d"], tid, int(raw_kbps), int(q["e"]))
        sig = q["s"]
    except (KeyError, ValueError):
        raise _refuse("malformed", "not a stream URL: it needs u, d, e and s") from None
    if not is_id(tid) or claim.kbps not in ALL_BITRATES:
        raise _refuse("malformed", "not a stream URL")
    return claim, sig


async def stream(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    if c.signer is None:
        raise SyncopateError(ErrorCode.NOT_FOUND, "this gateway serves no streams (no stream key)")
    claim, sig = _claim(request)
    if not c.signer.valid(claim, sig):
        raise _refuse("signature", "the stream URL's signature does not match")
    if claim.expires < time.time():
        raise _refuse("expired", "the stream URL expired")
    p = principal(request)
    if p.user_id != claim.user:
        raise _refuse("user", "the stream URL is another user's")
    device = p.device_id or request.headers.get(DEVICE_HEADER)
    if device != claim.device:
        raise _refuse("device", "the stream URL is another device's")
    track = c.catalog.track(claim.track_id)
    who = await c.markets.listener(p)        # the gateway's cached account facts (docs/rights.md)
    if track is None or track.restriction(who.country, who.explicit_filter) is not None:
        raise _refuse("unavailable", "the track is not available")
    size = audio_size(track.duration_ms, claim.kbps)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "audio/wav", "Cache-Control": "private, no-store"}
    rng = parse_range(request.headers.get("Range"), size)
    if rng == "unsatisfiable":
        err = SyncopateError(ErrorCode.RANGE_NOT_SATISFIABLE, f"the range is outside the {size} bytes")
        return web.json_response(err.to_spotify(), status=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = rng if rng is not None else (0, size)
    if rng is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    resp = web.StreamResponse(status=206 if rng is not None else 200, headers=headers)
    resp.content_length = end - start
    await resp.prepare(request)
    pos = start
    while pos < end:
        step = min(WRITE_CHUNK, end - pos)
        # each write awaits the socket's drain: a slow reader holds only one chunk in memory
        await resp.write(audio_bytes(claim.track_id, track.duration_ms, claim.kbps, pos, pos + step))
        pos += step
    await resp.write_eof()
    return resp
