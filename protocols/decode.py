"""The one decoding layer for bytes a client sends: JSON or msgpack in, plain values out.

Everything a client sends ends up in a Command that crosses the gateway <-> host stream, is packed
again by the host and is stored. A value that is not plain breaks that path for everyone, not just
for its sender: a msgpack ExtType inside a payload reached the host as an ExtType, the host's
channel decoder turned ext type 1 into an error object and the stream died. So a frame is decoded
here, once, into a value model every later stage handles, or it is refused before anything acts
on it:

  None, bool, int (64-bit signed), float (finite, |x| < 2**63), str, bytes, list, dict[str, ...]

nested at most MAX_DEPTH containers deep, with every string, byte string, array and map within its
length limit (below). Exact types only: a subclass (an IntEnum, a Timestamp, a tuple) is not plain,
because packing it and unpacking it again would hand the receiver a different type.

Codes (docs/protocol.md "Decoding limits"):
  FRAME_TOO_LARGE  the frame is over `max_bytes` (decode_frame; the websocket checks its configured,
                   smaller limit first)
  MALFORMED_FRAME  decode_value/decode_frame: the bytes are not one JSON / msgpack value, or the
                   value is outside the model above (extension type, too deep, too long, a non-string
                   map key, an integer outside 64 bits, a non-finite float)
  INVALID_FIELD    check_plain's default: a value built elsewhere (Command.args at the host channel)
                   is outside the model. The decoder passes MALFORMED_FRAME instead, so a client
                   always sees MALFORMED_FRAME for the encoding and INVALID_FIELD for a field of the
                   envelope (protocols/codec.py).

Every check is one pass over the decoded value with an explicit stack: the time is linear in the
size of the frame whatever its shape, and no input can exhaust the Python stack.
"""
from __future__ import annotations

import math
from typing import Any

import msgpack
import orjson

from protocols.errors import ErrorCode, SyncopateError

JSON = "json"
MSGPACK = "msgpack"

MAX_FRAME_BYTES = 4 * 1024 * 1024    # hard cap: the websocket reads nothing larger (4x its default limit)
MAX_DEPTH = 32                       # containers nested; an envelope is depth 1, its payload depth 2
MAX_STR_LEN = 1024 * 1024            # characters after decoding (msgpack also refuses > this many bytes)
MAX_BIN_LEN = MAX_FRAME_BYTES        # bytes: Yjs updates travel as msgpack bin
MAX_ARRAY_LEN = 100_000              # a playlist holds at most 10,000 entries; this is well above any request
MAX_MAP_LEN = 10_000                 # keys in one object

INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1
# orjson turns an integer literal beyond 64 bits into a float silently (18446744073709551616 ->
# 1.8446744073709552e19): refusing floats of that magnitude too is what keeps a too-big integer
# from being stored rounded. No field of this API means a number that large.
_FLOAT_LIMIT = float(1 << 63)


class RefusedExt:
    """What an extension type decodes to: a marker check_plain refuses (with the path to it), so
    the error names where the extension was and the frame's id can still be echoed. It never leaves
    this module's checks: decode_value refuses any value holding one."""
    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


def _refuse_ext(code: int, data: bytes) -> RefusedExt:
    # Called by msgpack for every extension type except -1: the timestamp extension is decoded by
    # msgpack itself into a msgpack.Timestamp (`timestamp=0`; the other settings would turn it into
    # a float, int or datetime indistinguishable from, or worse than, a client's own value), and
    # check_plain refuses that object the same way. No extension type decodes to a plain value.
    return RefusedExt(code)


def parse(data: bytes | str, encoding: str) -> Any:
    """Parse one JSON or msgpack value, without the value checks (decode_value adds them).
    Raises SyncopateError(MALFORMED_FRAME) for bytes that aren't exactly one value."""
    if encoding == JSON:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:     # also orjson's own 1024-deep recursion limit
            raise SyncopateError(ErrorCode.MALFORMED_FRAME, f"frame is not valid json: {exc}") from None
    if encoding == MSGPACK:
        # strict_map_key stays on: it admits str and bytes keys only (check_plain then refuses
        # bytes), because an int key's hash is not randomised and a map of colliding int keys
        # would take quadratic time to build. Such a frame is refused before its id can be read.
        try:
            return msgpack.unpackb(
                data, raw=False, strict_map_key=True, use_list=True, timestamp=0, ext_hook=_refuse_ext,
                max_str_len=MAX_STR_LEN, max_bin_len=MAX_BIN_LEN, max_array_len=MAX_ARRAY_LEN,
                max_map_len=MAX_MAP_LEN, max_ext_len=MAX_BIN_LEN)
        except msgpack.StackError:                # msgpack's own 1024-deep nesting limit
            raise SyncopateError(ErrorCode.MALFORMED_FRAME, "frame is not valid msgpack: nested too deeply") from None
        except Exception as exc:  # ExtraData, FormatError, UnicodeDecodeError, ValueError...
            raise SyncopateError(ErrorCode.MALFORMED_FRAME,
                                 f"frame is not valid msgpack: {type(exc).__name__}: {exc}") from None
    raise ValueError(f"unknown encoding {encoding!r}")


def decode_value(data: bytes | str, encoding: str) -> Any:
    """Parse one value and check it is plain. Raises SyncopateError(MALFORMED_FRAME)."""
    value = parse(data, encoding)
    check_plain(value, code=ErrorCode.MALFORMED_FRAME, where="frame")
    return value


def check_plain(value: Any, *, max_depth: int = MAX_DEPTH, code: ErrorCode = ErrorCode.INVALID_FIELD,
                where: str = "value") -> None:
    """Raise SyncopateError(code) unless `value` is a plain value within the limits above.

    `where` names the value in the message (e.g. "args"); the message adds the path of the first
    offending part found, e.g. "args.uris[3]: integer outside the 64-bit range". Returns None;
    never changes `value`.
    """
    found = _violation(value, max_depth)
    if found is not None:
        reason, node = found
        raise SyncopateError(code, f"{_path(where, node)}: {reason}")


def is_plain(value: Any, *, max_depth: int = MAX_DEPTH) -> bool:
    return _violation(value, max_depth) is None


# A stack entry is (value, depth, parent entry, key or index): the parent links rebuild the path
# of an offending value without building a path string for every value that is fine.
def _violation(value: Any, max_depth: int):
    stack = [(value, 1, None, None)]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        v = node[0]
        t = type(v)
        if t is str:
            if len(v) > MAX_STR_LEN:
                return f"string longer than {MAX_STR_LEN} characters", node
        elif t is int:
            if not INT_MIN <= v <= INT_MAX:
                return "integer outside the 64-bit range", node
        elif t is dict or t is list:
            depth = node[1]
            if depth > max_depth:
                return f"nested deeper than {max_depth}", node
            if t is dict:
                if len(v) > MAX_MAP_LEN:
                    return f"object with more than {MAX_MAP_LEN} keys", node
                for k, x in v.items():
                    if type(k) is not str:
                        return f"object key of type {type(k).__name__} (keys are strings)", node
                    if len(k) > MAX_STR_LEN:
                        return f"object key longer than {MAX_STR_LEN} characters", node
                    push((x, depth + 1, node, k))
            else:
                if len(v) > MAX_ARRAY_LEN:
                    return f"array longer than {MAX_ARRAY_LEN}", node
                for i, x in enumerate(v):
                    push((x, depth + 1, node, i))
        elif t is float:
            if not (math.isfinite(v) and -_FLOAT_LIMIT < v < _FLOAT_LIMIT):
                return "number not finite or outside the 64-bit range", node
        elif t is bytes:
            if len(v) > MAX_BIN_LEN:
                return f"byte string longer than {MAX_BIN_LEN}", node
        elif v is None or t is bool:
            pass
        elif t is msgpack.Timestamp:
            return "msgpack extension type -1 (timestamp) is not accepted", node
        elif t is RefusedExt or t is msgpack.ExtType:
            return f"msgpack extension type {v.code} is not accepted", node
        else:
            return f"{t.__name__} is not a plain value", node
    return None


def _path(where: str, node) -> str:
    keys = []
    while node is not None and node[2] is not None:
        keys.append(node[3])
        node = node[2]
    out = [where]
    for k in reversed(keys):
        if isinstance(k, int):
            out.append(f"[{k}]")
        elif k.isidentifier() and len(k) <= 40:
            out.append(f".{k}")
        else:
            out.append(f"[{k[:40]!r}{'...' if len(k) > 40 else ''}]")
    return "".join(out)
