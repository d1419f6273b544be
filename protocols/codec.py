"""Frame codec: JSON text frames and msgpack binary frames carry the same envelope schema."""
from __future__ import annotations

import base64
from typing import Any

import msgpack
import orjson

from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import CLIENT_TYPES, Envelope, MessageType

JSON = "json"
MSGPACK = "msgpack"


def decode_frame(data: bytes | str, encoding: str) -> Envelope:
    """Parse and validate one client frame. Raises SyncopateError; never returns half-valid input."""
    try:
        raw = orjson.loads(data) if encoding == JSON else msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # orjson.JSONDecodeError, msgpack exceptions of several kinds
        raise SyncopateError(ErrorCode.MALFORMED_FRAME, f"frame is not valid {encoding}: {exc}") from None
    if not isinstance(raw, dict):
        raise SyncopateError(ErrorCode.MALFORMED_FRAME, "a frame must be an object")
    rid = raw.get("id")
    if rid is not None and not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "id must be a string or an integer")
    mtype = raw.get("type")
    if not isinstance(mtype, str):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "type must be a string", id=rid)
    try:
        mt = MessageType(mtype)
    except ValueError:
        raise SyncopateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type {mtype!r}", id=rid) from None
    if mt not in CLIENT_TYPES:
        raise SyncopateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"{mtype!r} is not a client request", id=rid)
    payload = raw.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "payload must be an object", id=rid)
    op_id = raw.get("op_id")
    if op_id is not None and (not isinstance(op_id, str) or not 0 < len(op_id) <= 128):
        raise SyncopateError(ErrorCode.INVALID_FIELD, "op_id must be a string of 1 to 128 characters", id=rid)
    return Envelope(type=mt, id=rid, payload=payload, op_id=op_id)


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
