"""lib0, the binary encoding of the Yjs wire protocol and of Yjs v1 updates: the one reader and
writer of the project (y-websocket frames and awareness in protocols/yjs.py, state vectors, update
scanning and the playlist's hand-encoded inserts in actors/playlist_doc.py).

Every reader is bounded and linear in its input, and refuses malformed input with exactly one
error, `MalformedError` (a SyncopateError with code MALFORMED_FRAME; also a ValueError, which is
what callers of the update scanner caught before): never IndexError, UnicodeDecodeError,
RecursionError or anything else. The bounds:

- a var uint is at most 10 bytes (70 bits; lib0 itself writes at most 53): an 11th byte is an
  error. Unbounded, a run of 0xFF bytes makes one ever-growing big integer, and decoding turns
  quadratic (pycrdt's Decoder.read_var_uint: 200 KB of 0xFF took ~2.6 s);
- a var string / var buffer's length is checked against the bytes that remain (and an optional
  maximum) before anything is sliced;
- lib0 `any` values nest at most MAX_DEPTH deep;
- every loop reads at least one byte per iteration, so a count read off the wire can't make a
  loop outlast its input.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from protocols.errors import ErrorCode, SyncopateError

MAX_VARUINT_BYTES = 10
MAX_DEPTH = 64                 # nesting of lib0 `any` arrays / objects


class MalformedError(SyncopateError, ValueError):
    """Malformed lib0 / Yjs binary input (code MALFORMED_FRAME)."""

    def __init__(self, message: str = "malformed lib0 encoding") -> None:
        super().__init__(ErrorCode.MALFORMED_FRAME, message)


_TRUNCATED = "truncated lib0 encoding"


# -- reading ------------------------------------------------------------------------------------------
def read_var_uint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position). At most MAX_VARUINT_BYTES bytes."""
    try:
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
        n = b & 0x7F
        shift = 7
        end = pos + MAX_VARUINT_BYTES
        pos += 1
        while pos < end:
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n, pos
            shift += 7
    except IndexError:
        raise MalformedError(_TRUNCATED) from None
    raise MalformedError(f"a var uint longer than {MAX_VARUINT_BYTES} bytes")


def read_var_int(buf: bytes, pos: int) -> tuple[int, int]:
    """lib0 readVarInt: sign in bit 6 of the first byte, at most MAX_VARUINT_BYTES bytes."""
    try:
        r = buf[pos]
        pos += 1
        num = r & 0x3F
        neg = r & 0x40
        if r & 0x80:
            shift = 6
            end = pos + MAX_VARUINT_BYTES - 1
            while True:
                if pos >= end:
                    raise MalformedError(f"a var int longer than {MAX_VARUINT_BYTES} bytes")
                r = buf[pos]
                pos += 1
                num |= (r & 0x7F) << shift
                shift += 7
                if r < 0x80:
                    break
    except IndexError:
        raise MalformedError(_TRUNCATED) from None
    return (-num if neg else num), pos


def read_var_bytes(buf: bytes, pos: int, max_len: int | None = None) -> tuple[bytes, int]:
    """A length-prefixed buffer (lib0 readVarUint8Array)."""
    n, pos = read_var_uint(buf, pos)
    if n > len(buf) - pos:
        raise MalformedError(f"a buffer of {n} bytes with {len(buf) - pos} left")
    if max_len is not None and n > max_len:
        raise MalformedError(f"a buffer of {n} bytes (at most {max_len})")
    return bytes(buf[pos:pos + n]), pos + n


def skip_var_bytes(buf: bytes, pos: int) -> int:
    n, pos = read_var_uint(buf, pos)
    if n > len(buf) - pos:
        raise MalformedError(f"a buffer of {n} bytes with {len(buf) - pos} left")
    return pos + n


def read_var_string(buf: bytes, pos: int, max_len: int | None = None) -> tuple[str, int]:
    """A length-prefixed UTF-8 string (strict: invalid UTF-8 is malformed)."""
    data, pos = read_var_bytes(buf, pos, max_len)
    try:
        return data.decode("utf-8"), pos
    except UnicodeDecodeError:
        raise MalformedError("a string that is not UTF-8") from None


def skip_any(buf: bytes, pos: int, depth: int = 0) -> int:
    """Skip one lib0 `any` value (readAny)."""
    try:
        t = buf[pos]
    except IndexError:
        raise MalformedError(_TRUNCATED) from None
    pos += 1
    if t == 119 or t == 116:                       # string, Uint8Array
        return skip_var_bytes(buf, pos)
    if t == 123 or t == 122:                       # float64, bigint64
        return _skip(buf, pos, 8)
    if t == 124:                                   # float32
        return _skip(buf, pos, 4)
    if t == 125:                                   # varInt
        return read_var_int(buf, pos)[1]
    if 120 <= t <= 127:                            # true, false, null, undefined
        return pos
    if t == 118 or t == 117:                       # object, array
        if depth >= MAX_DEPTH:
            raise MalformedError(f"lib0 values nest deeper than {MAX_DEPTH}")
        n, pos = read_var_uint(buf, pos)
        for _ in range(n):
            if t == 118:
                pos = skip_var_bytes(buf, pos)
            pos = skip_any(buf, pos, depth + 1)
        return pos
    raise MalformedError(f"unknown lib0 value type {t}")


def read_any(buf: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    """One lib0 `any` value, decoded (strings, numbers, booleans, None, lists, dicts, bytes)."""
    try:
        t = buf[pos]
    except IndexError:
        raise MalformedError(_TRUNCATED) from None
    pos += 1
    if t == 119:
        return read_var_string(buf, pos)
    if t == 116:
        return read_var_bytes(buf, pos)
    if t == 123:
        _skip(buf, pos, 8)
        return struct.unpack_from(">d", buf, pos)[0], pos + 8
    if t == 122:
        _skip(buf, pos, 8)
        return struct.unpack_from(">q", buf, pos)[0], pos + 8
    if t == 124:
        _skip(buf, pos, 4)
        return struct.unpack_from(">f", buf, pos)[0], pos + 4
    if t == 125:
        return read_var_int(buf, pos)
    if 120 <= t <= 127:
        return {120: True, 121: False, 126: None, 127: None}[t], pos
    if t == 118 or t == 117:
        if depth >= MAX_DEPTH:
            raise MalformedError(f"lib0 values nest deeper than {MAX_DEPTH}")
        n, pos = read_var_uint(buf, pos)
        if t == 117:
            items = []
            for _ in range(n):
                v, pos = read_any(buf, pos, depth + 1)
                items.append(v)
            return items, pos
        obj = {}
        for _ in range(n):
            k, pos = read_var_string(buf, pos)
            obj[k], pos = read_any(buf, pos, depth + 1)
        return obj, pos
    raise MalformedError(f"unknown lib0 value type {t}")


def _skip(buf: bytes, pos: int, n: int) -> int:
    if pos + n > len(buf):
        raise MalformedError(_TRUNCATED)
    return pos + n


# -- writing ------------------------------------------------------------------------------------------
def write_var_uint(n: int) -> bytes:
    if n < 0x80:
        if n < 0:
            raise ValueError("a var uint is not negative")
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_var_bytes(data: bytes) -> bytes:
    return write_var_uint(len(data)) + data


def write_var_string(s: str) -> bytes:
    return write_var_bytes(s.encode())


# -- Yjs: state vectors, delete sets ----------------------------------------------------------------
def decode_state_vector(sv: bytes) -> dict[int, int]:
    """A Yjs state vector {client: clock}; the whole input must be consumed."""
    n, pos = read_var_uint(sv, 0)
    out = {}
    for _ in range(n):
        client, pos = read_var_uint(sv, pos)
        clock, pos = read_var_uint(sv, pos)
        out[client] = clock
    if pos != len(sv):
        raise MalformedError("trailing bytes after a state vector")
    return out


def encode_state_vector(sv: dict[int, int]) -> bytes:
    return write_var_uint(len(sv)) + b"".join(write_var_uint(c) + write_var_uint(k) for c, k in sorted(sv.items()))


def encode_delete_update(ranges: Iterable[tuple[int, int, int]]) -> bytes:
    """A Yjs v1 update with no structs and the delete set `ranges` [(client, clock, length)]: applied,
    it deletes exactly those items (whatever their type or parent)."""
    by: dict[int, list[tuple[int, int]]] = {}
    for client, clock, length in ranges:
        by.setdefault(client, []).append((clock, length))
    parts = [b"\x00", write_var_uint(len(by))]
    for client in sorted(by):
        rs = sorted(by[client])
        parts += [write_var_uint(client), write_var_uint(len(rs))]
        parts += [write_var_uint(k) + write_var_uint(n) for k, n in rs]
    return b"".join(parts)


# -- Yjs v1 updates: scanning ---------------------------------------------------------------------------
class UpdateScan:
    """What `scan_update` reads out of a Yjs v1 update without integrating it."""
    __slots__ = ("deletes", "ends", "ids", "structs")

    def __init__(self) -> None:
        self.ids: dict[str, list[tuple[int, int]]] = {}   # entry id -> Y.Map items whose "id" key is first set to it
        self.ends: dict[int, int] = {}                    # client -> end clock of its structs in the update
        self.deletes: list[tuple[int, int, int]] = []     # the delete set: (client, clock, length)
        # with structs=True: every item, as (client, clock, length, how, ref, deleted): where it
        # lives is told by `how` - ROOT: ref = (root name, has parentSub), PARENT: ref = the parent
        # item's id, ORIGIN / RIGHT: ref = the id of the neighbour whose parent it shares
        self.structs: list[tuple] = []

    def known(self) -> dict[int, int]:
        """A lower bound of the sender's state vector implied by the update alone: it had the items
        it sends, and every item its delete set covers (Yjs encodes deletions of items it holds;
        a client's items are integrated contiguously, so holding (c, k) means holding (c, < k))."""
        out = dict(self.ends)
        for client, clock, length in self.deletes:
            end = clock + length
            if end > out.get(client, 0):
                out[client] = end
        return out


ROOT, PARENT, ORIGIN, RIGHT = 0, 1, 2, 3


def _vu(buf: bytes, pos: int) -> tuple[int, int]:
    """read_var_uint, unrolled for the common short encodings (item ids: 32-bit clients); the
    caller turns IndexError into MalformedError."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    n = b & 0x7F
    b = buf[pos + 1]
    if b < 0x80:
        return n | b << 7, pos + 2
    n |= (b & 0x7F) << 7
    b = buf[pos + 2]
    if b < 0x80:
        return n | b << 14, pos + 3
    n |= (b & 0x7F) << 14
    b = buf[pos + 3]
    if b < 0x80:
        return n | b << 21, pos + 4
    return read_var_uint(buf, pos)           # long: the bounded reader


def scan_update(update: bytes, *, ids: bool = True, structs: bool = False) -> UpdateScan:
    """Decode a Yjs v1 update's structs and delete set (Yjs UpdateDecoderV1) far enough to know:
    which Y.Map items set an "id" key to which string (their first write of the key: parent given
    as an item id, parentSub "id", content Any), each client's end clock, the delete set, and with
    `structs` where every item lives (UpdateScan.structs). Linear in the update's size; malformed
    input raises MalformedError."""
    out = UpdateScan()
    buf = update
    size = len(buf)
    vu = _vu
    found = out.ids
    rec = out.structs.append if structs else None
    try:
        n_clients, pos = vu(buf, 0)
        for _ in range(n_clients):
            n_structs, pos = vu(buf, pos)
            client, pos = vu(buf, pos)
            clock, pos = vu(buf, pos)
            for _ in range(n_structs):
                info = buf[pos]
                pos += 1
                ref = info & 0x1F
                if ref == 0 or ref == 10:                       # GC, Skip
                    length, pos = vu(buf, pos)
                    clock += length
                    continue
                parent_id = None
                id_key = False
                where = None
                if info & 0xC0:
                    if info & 0x80:                             # origin
                        oc, pos = vu(buf, pos)
                        ok, pos = vu(buf, pos)
                        where = (ORIGIN, (oc, ok))
                    if info & 0x40:                             # right origin
                        rc, pos = vu(buf, pos)
                        rk, pos = vu(buf, pos)
                        if where is None:
                            where = (RIGHT, (rc, rk))
                else:                                           # parent info
                    root = buf[pos]
                    pos += 1
                    if root == 1:
                        n, pos = vu(buf, pos)
                        if pos + n > size:
                            raise IndexError
                        name = buf[pos:pos + n]
                        pos += n
                    else:
                        name = None
                        pc, pos = vu(buf, pos)
                        pk, pos = vu(buf, pos)
                        parent_id = (pc, pk)
                    sub = bool(info & 0x20)
                    if sub:
                        n, pos = vu(buf, pos)
                        id_key = n == 2 and buf[pos:pos + 2] == b"id"
                        pos += n
                    if rec is not None:
                        where = (ROOT, (name.decode("utf-8", "replace"), sub)) if name is not None \
                            else (PARENT, parent_id)
                start = clock
                if ref == 8:                                    # ContentAny
                    length, pos = vu(buf, pos)
                    for i in range(length):
                        t = buf[pos]
                        if t == 119:                            # a string
                            n, pos = vu(buf, pos + 1)
                            if i == 0 and id_key and ids and parent_id is not None:
                                if pos + n > size:
                                    raise IndexError
                                found.setdefault(buf[pos:pos + n].decode("utf-8", "replace"), []).append(parent_id)
                            pos += n
                        elif t == 123:                          # float64
                            pos += 9
                        else:
                            pos = skip_any(buf, pos)
                elif ref == 7:                                  # ContentType
                    type_ref, pos = vu(buf, pos)
                    if type_ref == 3 or type_ref == 5:          # XmlElement, XmlHook: a name
                        pos = skip_var_bytes(buf, pos)
                    length = 1
                elif ref == 1:                                  # ContentDeleted
                    length, pos = vu(buf, pos)
                elif ref == 4:                                  # ContentString: UTF-16 length
                    n, pos = vu(buf, pos)
                    if pos + n > size:
                        raise IndexError
                    length = len(buf[pos:pos + n].decode("utf-8", "surrogatepass").encode("utf-16-le")) // 2
                    pos += n
                elif ref == 2:                                  # ContentJSON
                    length, pos = vu(buf, pos)
                    for _ in range(length):
                        pos = skip_var_bytes(buf, pos)
                elif ref == 3 or ref == 5:                      # ContentBinary, ContentEmbed
                    pos = skip_var_bytes(buf, pos)
                    length = 1
                elif ref == 6:                                  # ContentFormat
                    pos = skip_var_bytes(buf, skip_var_bytes(buf, pos))
                    length = 1
                elif ref == 9:                                  # ContentDoc
                    pos = skip_var_bytes(buf, pos)
                    pos = skip_any(buf, pos)
                    length = 1
                else:
                    raise MalformedError(f"unknown Yjs content type {ref}")
                clock += length
                if rec is not None and length:
                    rec((client, start, length, where[0], where[1], ref == 1))
            if pos > size:
                raise IndexError
            if clock > out.ends.get(client, 0):
                out.ends[client] = clock
        if pos < size:
            n_clients, pos = vu(buf, pos)
            dels = out.deletes
            for _ in range(n_clients):
                client, pos = vu(buf, pos)
                n, pos = vu(buf, pos)
                for _ in range(n):
                    clock, pos = vu(buf, pos)
                    length, pos = vu(buf, pos)
                    dels.append((client, clock, length))
        if pos > size:
            raise IndexError
    except IndexError:
        raise MalformedError("truncated Yjs update") from None
    except UnicodeDecodeError:
        raise MalformedError("a Yjs string that is not UTF-8") from None
    return out


def first_struct(update: bytes) -> tuple[int, int, tuple[int, int] | None]:
    """(client, clock, origin) of the first struct of a single-client update."""
    try:
        _, pos = _vu(update, 0)
        _, pos = _vu(update, pos)
        client, pos = _vu(update, pos)
        clock, pos = _vu(update, pos)
        info = update[pos]
        pos += 1
        origin = None
        if info & 0x80:
            oc, pos = _vu(update, pos)
            ok, pos = _vu(update, pos)
            origin = (oc, ok)
    except IndexError:
        raise MalformedError("truncated Yjs update") from None
    return client, clock, origin


# -- Yjs v1 updates: writing ----------------------------------------------------------------------------
_F64 = struct.Struct(">d").pack


def _value(v: Any, cache: dict) -> bytes:
    """lib0 writeAny of a string (cached: few distinct values) or a number (float64)."""
    if isinstance(v, str):
        b = cache.get(v)
        if b is None:
            b = cache[v] = b"\x77" + write_var_string(v)
        return b
    return b"\x7b" + _F64(float(v))


def encode_map_chain(client: int, clock: int, left: tuple[int, int] | None, right: tuple[int, int],
                     maps: list[list[tuple[str, Any]]]) -> bytes:
    """A Yjs v1 update inserting `maps` (each a Y.Map of the given keys and string / number values),
    in order, into the array holding `right`, between the item `left` (None = the array's start)
    and `right`, as `client` from `clock`.

    The k Y.Map items take clocks clock .. clock+k-1, each with the previous one as origin and
    `right` as right origin, and their key items follow. Consecutive clocks and a chained origin
    let yrs squash the tombstones of maps deleted together into one block."""
    k = len(maps)
    parts: list[bytes] = []
    add = parts.append
    vu = write_var_uint
    rid = vu(right[0]) + vu(right[1])
    cl = vu(client)
    tail = rid + b"\x01"                                      # rightOrigin, ContentType: YMap
    add((b"\x47" if left is None else b"\xc7" + vu(left[0]) + vu(left[1])) + tail)
    for c in range(clock, clock + k - 1):
        add(b"\xc7" + cl + vu(c) + tail)                       # origin: the previous new map
    cache: dict[str, bytes] = {}
    keys: dict[str, bytes] = {}
    n_structs = k
    for i, fields in enumerate(maps):
        head = b"\x28\x00" + cl + vu(clock + i)                # info: parentSub | ContentAny; parent = ID
        for key, value in fields:
            kb = keys.get(key)
            if kb is None:
                kb = keys[key] = write_var_string(key) + b"\x01"
            add(head + kb + _value(value, cache))
            n_structs += 1
    return b"\x01" + vu(n_structs) + cl + vu(clock) + b"".join(parts) + b"\x00"
