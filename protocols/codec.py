"""Frame codec: JSON text frames and msgpack binary frames carry the same envelope schema."""
from __future__ import annotations

import base64
from typing import Any

import msgpack
import orjson

from protocols import decode
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import CLIENT_TYPES, Envelope, MessageType

JSON = decode.JSON
MSGPACK = decode.MSGPACK
MAX_ID_LEN = 256                # a request id is echoed in every answer: keep it an id, not a payload
_CLIENT_BY_VALUE = {t.value: t for t in CLIENT_TYPES}


def decode_frame(data: bytes | str, encoding: str, *, max_bytes: int = decode.MAX_FRAME_BYTES) -> Envelope:
    """Parse and validate one client frame. Raises SyncopateError; never returns half-valid input.

    The bytes go through protocols/decode.py (MALFORMED_FRAME for anything that isn't one plain
    JSON / msgpack value within its limits); the envelope's fields are checked here (INVALID_FIELD,
    UNKNOWN_MESSAGE_TYPE). A caller with a frame limit above MAX_FRAME_BYTES passes its own."""
    size = frame_bytes(data, max_bytes)
    if size > max_bytes:
        raise SyncopateError(ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes exceeds {max_bytes}")
    raw = decode.parse(data, encoding)
    # Echo the request's id when the value is refused for something inside it, so the client can
    # tell which of its requests it was.
    rid = raw.get("id") if isinstance(raw, dict) else None
    try:
        decode.check_plain(raw, code=ErrorCode.MALFORMED_FRAME, where="frame")
    except SyncopateError as err:
        if _valid_id(rid) and decode.is_plain(rid):
            err.details["id"] = rid
        raise
    if not isinstance(raw, dict):
        raise SyncopateError(ErrorCode.MALFORMED_FRAME, "a frame must be an object")
    rid = raw.get("id")
    if rid is not None and not _valid_id(rid):
        raise SyncopateError(ErrorCode.INVALID_FIELD,
                             f"id must be a string of at most {MAX_ID_LEN} characters or an integer")
    mtype = raw.get("type")
    if not isinstance(mtype, str):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "type must be a string", id=rid)
    mt = _CLIENT_BY_VALUE.get(mtype)          # a dict lookup: MessageType(value) was 1 in 7 of this function
    if mt is None:
        if mtype in MessageType._value2member_map_:
            raise SyncopateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"{mtype!r} is not a client request", id=rid)
        raise SyncopateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {mtype!r}", id=rid)
    payload = raw.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "payload must be an object", id=rid)
    op_id = raw.get("op_id")
    if op_id is not None and (not isinstance(op_id, str) or not 0 < len(op_id) <= 128):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "op_id must be a string of 1 to 128 characters", id=rid)
    return Envelope(type=mt, id=rid, payload=payload, op_id=op_id)


def frame_bytes(data: bytes | str, max_bytes: int) -> int:
    """A frame's size in bytes, exact wherever it decides against `max_bytes`. A str's UTF-8 form
    is 1 to 4 bytes a character, so it is encoded only when its length can't tell (a W2 command
    was encoded twice just to be measured: by gateway/ws.py and again here)."""
    size = len(data)
    if isinstance(data, str) and max_bytes < size * 4 and size <= max_bytes:
        size = len(data.encode())
    return size


def _valid_id(rid: Any) -> bool:
    # bool is an int to Python, not to the client; the int range is decode's (64-bit)
    return (type(rid) is str and len(rid) <= MAX_ID_LEN) or type(rid) is int


def json_default(obj: Any) -> Any:
    """JSON has no bytes: Yjs updates and other binary fields travel as base64 strings."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps_json(obj: Any) -> bytes:
    return orjson.dumps(obj, default=json_default, option=orjson.OPT_NON_STR_KEYS)


def encode_frame(msg: dict, encoding: str) -> bytes:
    if encoding == JSON:
        return dumps_json(msg)
    return msgpack.packb(msg, use_bin_type=True)


def encode_ws(msg: dict, encoding: str) -> str | bytes:
    """What goes on the socket: a text frame (str) for JSON, a binary frame (bytes) for msgpack."""
    data = encode_frame(msg, encoding)
    return data.decode() if encoding == JSON else data


def result(rid: Any, payload: Any, version: int | None = None) -> dict:
    out = {"id": rid, "type": MessageType.RESULT.value, "payload": payload}
    if version is not None:
        out["version"] = version
    return out


def error(rid: Any, err: SyncopateError) -> dict:
    return {"id": rid, "type": MessageType.ERROR.value, "error": err.to_wire()}


def push(mtype: str, entity: str, version: int, payload: Any) -> dict:
    return {"type": mtype, "entity": entity, "version": version, "payload": payload}
