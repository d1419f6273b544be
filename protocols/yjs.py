"""The y-websocket wire format (../shared/reference/yjs-sync-protocol.md), built on pycrdt's codec.

One frame may carry several messages back to back (the y-websocket client packs them), so
`parse_frame` returns them all, and refuses the whole frame if any part is malformed.
"""
from __future__ import annotations

from dataclasses import dataclass

from pycrdt import (Decoder, YMessageType, YSyncMessageType, create_awareness_message, create_update_message,
                    write_var_uint)

from protocols.errors import ErrorCode, SyncopateError

AUTH = 2
QUERY_AWARENESS = 3
PERMISSION_DENIED = 0


@dataclass(frozen=True)
class YMessage:
    type: int                 # YMessageType.SYNC / AWARENESS, AUTH, QUERY_AWARENESS
    subtype: int | None       # YSyncMessageType for SYNC
    payload: bytes


def parse_frame(frame: bytes) -> list[YMessage]:
    out: list[YMessage] = []
    dec = Decoder(bytes(frame))
    try:
        while dec.length > 0:
            mtype = dec.read_var_uint()
            if mtype == YMessageType.SYNC:
                sub = dec.read_var_uint()
                if sub not in (0, 1, 2):
                    raise SyncopateError(ErrorCode.MALFORMED_FRAME, f"unknown sync message {sub}")
                payload = dec.read_message()
                if payload is None:
                    raise SyncopateError(ErrorCode.MALFORMED_FRAME, "truncated sync message")
                out.append(YMessage(mtype, sub, payload))
            elif mtype == YMessageType.AWARENESS:
                payload = dec.read_message()
                if payload is None:
                    raise SyncopateError(ErrorCode.MALFORMED_FRAME, "truncated awareness message")
                out.append(YMessage(mtype, None, payload))
            elif mtype == QUERY_AWARENESS:
                out.append(YMessage(mtype, None, b""))
            elif mtype == AUTH:
                dec.read_var_uint()
                dec.read_message()
            else:
                raise SyncopateError(ErrorCode.MALFORMED_FRAME, f"unknown y-protocol message type {mtype}")
            if dec.length < 0:       # pycrdt's Decoder slices past the end silently
                raise SyncopateError(ErrorCode.MALFORMED_FRAME, "truncated y-protocol frame")
    except (IndexError, RuntimeError):
        raise SyncopateError(ErrorCode.MALFORMED_FRAME, "truncated y-protocol frame") from None
    return out


def parse_awareness(payload: bytes) -> list[tuple[int, int, str]]:
    """An awareness update: [(client id, clock, state JSON or "null")]."""
    dec = Decoder(bytes(payload))
    try:
        out = []
        for _ in range(dec.read_var_uint()):
            client, clock = dec.read_var_uint(), dec.read_var_uint()
            out.append((client, clock, dec.read_var_string()))
            if dec.length < 0:
                raise IndexError
        return out
    except (IndexError, RuntimeError, UnicodeDecodeError):
        raise SyncopateError(ErrorCode.MALFORMED_FRAME, "malformed awareness update") from None


def encode_awareness(entries: list[tuple[int, int, str]]) -> bytes:
    parts = [write_var_uint(len(entries))]
    for client, clock, state in entries:
        data = state.encode()
        parts += [write_var_uint(client), write_var_uint(clock), write_var_uint(len(data)), data]
    return b"".join(parts)


def sync_step1(state_vector: bytes) -> bytes:
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1]) + write_var_uint(len(state_vector)) + state_vector


def sync_step2(update: bytes) -> bytes:
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2]) + write_var_uint(len(update)) + update


def update(update_bytes: bytes) -> bytes:
    return create_update_message(update_bytes)


def awareness(payload: bytes) -> bytes:
    return create_awareness_message(payload)


def permission_denied(reason: str) -> bytes:
    data = reason.encode()
    return bytes([AUTH, PERMISSION_DENIED]) + write_var_uint(len(data)) + data
