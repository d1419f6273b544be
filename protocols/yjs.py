"""The y-websocket wire format (../shared/reference/yjs-sync-protocol.md), read and written with
protocols/lib0.py (bounded and linear; pycrdt's Decoder is quadratic on long varints).

One frame may carry several messages back to back (the y-websocket client packs them), so
`parse_frame` returns them all, and refuses the whole frame if any part is malformed. Every parser
here raises lib0.MalformedError (a SyncopateError, code MALFORMED_FRAME) and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

from protocols.lib0 import MalformedError, read_var_bytes, read_var_string, read_var_uint, write_var_uint

SYNC = 0
AWARENESS = 1
AUTH = 2
QUERY_AWARENESS = 3
SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE = 0, 1, 2
PERMISSION_DENIED = 0
MAX_AWARENESS_STATE = 64 << 10      # one client's awareness state (JSON): y-protocols has no limit


@dataclass(frozen=True)
class YMessage:
    type: int                 # SYNC / AWARENESS, AUTH, QUERY_AWARENESS
    subtype: int | None       # SYNC_STEP1 / SYNC_STEP2 / SYNC_UPDATE for SYNC
    payload: bytes


def parse_frame(frame: bytes) -> list[YMessage]:
    buf = bytes(frame)
    out: list[YMessage] = []
    pos = 0
    while pos < len(buf):
        mtype, pos = read_var_uint(buf, pos)
        if mtype == SYNC:
            sub, pos = read_var_uint(buf, pos)
            if sub not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
                raise MalformedError(f"unknown sync message {sub}")
            payload, pos = read_var_bytes(buf, pos)
            out.append(YMessage(mtype, sub, payload))
        elif mtype == AWARENESS:
            payload, pos = read_var_bytes(buf, pos)
            out.append(YMessage(mtype, None, payload))
        elif mtype == QUERY_AWARENESS:
            out.append(YMessage(mtype, None, b""))
        elif mtype == AUTH:
            _, pos = read_var_uint(buf, pos)
            _, pos = read_var_bytes(buf, pos)
        else:
            raise MalformedError(f"unknown y-protocol message type {mtype}")
    return out


def parse_awareness(payload: bytes) -> list[tuple[int, int, str]]:
    """An awareness update: [(client id, clock, state JSON or "null")]."""
    buf = bytes(payload)
    n, pos = read_var_uint(buf, 0)
    out = []
    for _ in range(n):
        client, pos = read_var_uint(buf, pos)
        clock, pos = read_var_uint(buf, pos)
        state, pos = read_var_string(buf, pos, MAX_AWARENESS_STATE)
        out.append((client, clock, state))
    if pos != len(buf):
        raise MalformedError("trailing bytes after an awareness update")
    return out


def encode_awareness(entries: list[tuple[int, int, str]]) -> bytes:
    parts = [write_var_uint(len(entries))]
    for client, clock, state in entries:
        data = state.encode()
        parts += [write_var_uint(client), write_var_uint(clock), write_var_uint(len(data)), data]
    return b"".join(parts)


def sync_step1(state_vector: bytes) -> bytes:
    return bytes([SYNC, SYNC_STEP1]) + write_var_uint(len(state_vector)) + state_vector


def sync_step2(update: bytes) -> bytes:
    return bytes([SYNC, SYNC_STEP2]) + write_var_uint(len(update)) + update


def update(update_bytes: bytes) -> bytes:
    return bytes([SYNC, SYNC_UPDATE]) + write_var_uint(len(update_bytes)) + update_bytes


def awareness(payload: bytes) -> bytes:
    return bytes([AWARENESS]) + write_var_uint(len(payload)) + payload


def permission_denied(reason: str) -> bytes:
    data = reason.encode()
    return bytes([AUTH, PERMISSION_DENIED]) + write_var_uint(len(data)) + data
