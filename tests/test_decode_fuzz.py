"""Property tests of the client frame decoder (protocols/codec.decode_frame over protocols/decode.py).

Whatever the bytes, decode_frame returns an Envelope holding only plain values or raises a
SyncopateError with one of the documented codes; which one is predicted by an independent oracle
of the rules in docs/protocol.md "Decoding limits". A valid envelope round-trips. Decoding time
grows linearly with the input for the adversarial shapes (deep nesting, long arrays, wide maps).
"""
import gc
import json
import math
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import decode
from protocols.codec import JSON, MSGPACK, decode_frame, dumps_json, encode_frame
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import CLIENT_TYPES, MessageType

DOCUMENTED = {ErrorCode.MALFORMED_FRAME, ErrorCode.INVALID_FIELD, ErrorCode.UNKNOWN_MESSAGE_TYPE,
              ErrorCode.FRAME_TOO_LARGE}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plain(v, depth=1) -> bool:
    """The oracle: the value model of docs/protocol.md, written independently of decode.py."""
    if v is None or type(v) is bool:
        return True
    if type(v) is int:
        return -2 ** 63 <= v < 2 ** 63
    if type(v) is float:
        return math.isfinite(v) and abs(v) < 2.0 ** 63
    if type(v) is str:
        return len(v) <= decode.MAX_STR_LEN
    if type(v) is bytes:
        return len(v) <= decode.MAX_BIN_LEN
    if type(v) is list:
        return depth <= decode.MAX_DEPTH and len(v) <= decode.MAX_ARRAY_LEN and all(plain(x, depth + 1) for x in v)
    if type(v) is dict:
        return (depth <= decode.MAX_DEPTH and len(v) <= decode.MAX_MAP_LEN
                and all(type(k) is str and plain(x, depth + 1) for k, x in v.items()))
    return False


def outcome(data, encoding):
    try:
        env = decode_frame(data, encoding)
    except SyncopateError as err:
        assert err.code in DOCUMENTED, err
        assert err.status == (413 if err.code == ErrorCode.FRAME_TOO_LARGE else 400), err
        return err
    except BaseException as exc:                      # anything else is the bug this file hunts
        pytest.fail(f"decode_frame raised {type(exc).__name__}: {exc!r} for {data[:200]!r}")
    assert env.type in CLIENT_TYPES and isinstance(env.payload, dict) and decode.is_plain(env.payload)
    return env


def envelope_refusal(value: dict) -> ErrorCode | None:
    """The code decode_frame gives a plain object, in the order it checks the envelope's fields
    (protocols/codec.py): the id, the type's type, the type's name, the payload, the op id."""
    from protocols.messages import CLIENT_TYPES
    from protocols.codec import _valid_id
    rid = value.get("id")
    if rid is not None and not _valid_id(rid):
        return ErrorCode.INVALID_FIELD
    mtype = value.get("type")
    if not isinstance(mtype, str):
        return ErrorCode.INVALID_FIELD
    if mtype not in {t.value for t in CLIENT_TYPES}:          # unknown, or server -> client only
        return ErrorCode.UNKNOWN_MESSAGE_TYPE
    payload = value.get("payload", {})
    if payload is not None and not isinstance(payload, dict):
        return ErrorCode.INVALID_FIELD
    op_id = value.get("op_id")
    if op_id is not None and (not isinstance(op_id, str) or not 0 < len(op_id) <= 128):
        return ErrorCode.INVALID_FIELD
    return None


def check_against_oracle(value, got):
    """What decode_frame must do with the frame `value` was packed into."""
    if not plain(value):
        assert isinstance(got, SyncopateError) and got.code == ErrorCode.MALFORMED_FRAME, (value, got)
    elif not isinstance(value, dict):
        assert isinstance(got, SyncopateError) and got.code == ErrorCode.MALFORMED_FRAME, (value, got)
    elif isinstance(got, SyncopateError):
        assert got.code == envelope_refusal(value), (value, got)
    else:
        assert got.payload == (value.get("payload") or {}) and got.id == value.get("id")


# -- strategies ------------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)     # packable and JSON-able
EDGE_INTS = st.sampled_from([2 ** 63 - 1, 2 ** 63, -2 ** 63, -2 ** 63 - 1, 2 ** 64 - 1, 2 ** 64, 10 ** 30])
EDGE_FLOATS = st.sampled_from([float("inf"), -float("inf"), float("nan"), 2.0 ** 63, -2.0 ** 63, 1e300, 0.5])
PACKABLE_INTS = st.integers(-2 ** 63, 2 ** 64 - 1) | EDGE_INTS.filter(lambda i: -2 ** 63 <= i < 2 ** 64)
TYPES = st.sampled_from([t.value for t in MessageType] + ["", "no.such", "PING"])


def nested(leaf):
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
                        max_leaves=30)


def deep(n: int, leaf=0):
    v = leaf
    for i in range(n):
        v = [v] if i % 2 else {"d": v}
    return v


MSGPACK_LEAF = (st.none() | st.booleans() | PACKABLE_INTS
                | st.floats() | EDGE_FLOATS | TEXT | st.binary(max_size=20)
                | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
                | st.builds(msgpack.Timestamp, st.integers(0, 2 ** 32), st.integers(0, 999_999_999)))
MSGPACK_VALUE = st.recursive(
    MSGPACK_LEAF,
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(TEXT | st.integers(-5, 5) | st.binary(max_size=4), kids, max_size=4),
    max_leaves=30) | st.integers(0, 40).map(deep)

JSON_LEAF = (st.none() | st.booleans() | st.integers() | EDGE_INTS | st.floats(allow_nan=False, allow_infinity=False)
             | EDGE_FLOATS | TEXT)
JSON_VALUE = nested(JSON_LEAF) | st.integers(0, 40).map(deep)


def envelope(value_strategy, ints=st.integers() | EDGE_INTS):
    return st.fixed_dictionaries({"type": TYPES, "payload": value_strategy},
                                 optional={"id": ints | TEXT | st.booleans(),
                                           "op_id": TEXT | st.integers(0, 9)})


# -- arbitrary bytes -------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_msgpack(data):
    outcome(data, MSGPACK)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_json(data):
    outcome(data, JSON)


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_prefix(prefix, junk):
    # truncated and extended frames: a real envelope with bytes cut off or appended
    frame = msgpack.packb({"id": 1, "type": "ping", "payload": {"b": prefix}})
    outcome(frame[:len(frame) // 2] + junk, MSGPACK)
    outcome(frame + junk, MSGPACK)
    outcome(b'{"id": 1, "type": "ping", "payload": ' + junk, JSON)


# -- arbitrary structures --------------------------------------------------------------------------

@FUZZ
@given(MSGPACK_VALUE | envelope(MSGPACK_VALUE, ints=PACKABLE_INTS))
def test_arbitrary_msgpack_structures(value):
    check_against_oracle(value, outcome(msgpack.packb(value, use_bin_type=True), MSGPACK))


@FUZZ
@given(JSON_VALUE | envelope(JSON_VALUE))
def test_arbitrary_json_structures(value):
    # the standard library writes any int exactly and inf/nan as Infinity/NaN (which are not JSON)
    text = json.dumps(value)
    got = outcome(text, JSON)
    check_against_oracle(value, got)
    got_bytes = outcome(text.encode(), JSON)
    assert type(got_bytes) is type(got)


@pytest.mark.parametrize("encoding", [JSON, MSGPACK])
@pytest.mark.parametrize("depth,ok", [(30, True), (31, False), (1023, False), (5000, False)])
def test_nesting_limit(encoding, depth, ok):
    # the envelope is depth 1 and its payload depth 2, so a payload field may hold 30 more
    # containers. Written out by hand: the encoders themselves refuse the deepest of these.
    if encoding == JSON:
        data = '{"id": 1, "type": "ping", "payload": {"x": ' + "[" * depth + "]" * depth + "}}"
    else:
        data = (b"\x83" + msgpack.packb("id") + msgpack.packb(1) + msgpack.packb("type") + msgpack.packb("ping")
                + msgpack.packb("payload") + b"\x81" + msgpack.packb("x") + b"\x91" * (depth - 1) + b"\x90")
    got = outcome(data, encoding)
    if ok:
        assert not isinstance(got, SyncopateError), got
    else:
        assert isinstance(got, SyncopateError) and got.code == ErrorCode.MALFORMED_FRAME, got


@pytest.mark.parametrize("value,where", [
    (msgpack.ExtType(1, b"\xc0"), "frame.payload.args[0]"),
    (msgpack.Timestamp(0, 0), "frame.payload.args[0]"),
    (2 ** 63, "frame.payload.args[0]"),
    (float("nan"), "frame.payload.args[0]"),
    ({"k": b"x" * 10}, None),                      # plain
])
def test_refusal_names_the_path_and_echoes_the_id(value, where):
    got = outcome(msgpack.packb({"id": "r7", "type": "ping", "payload": {"args": [value]}}), MSGPACK)
    if where is None:
        assert got.payload == {"args": [value]}
    else:
        assert got.code == ErrorCode.MALFORMED_FRAME and got.message.startswith(where + ":"), got.message
        assert got.details == {"id": "r7"}


def test_frame_over_the_hard_cap_is_refused_unparsed():
    big = msgpack.packb({"id": 1, "type": "ping", "payload": {"b": b"x" * decode.MAX_FRAME_BYTES}})
    assert outcome(big, MSGPACK).code == ErrorCode.FRAME_TOO_LARGE
    assert outcome(b"x" * 100, MSGPACK).code == ErrorCode.MALFORMED_FRAME
    assert outcome(b'{"id":1,"type":"ping"}', JSON).type == MessageType.PING


def test_a_text_frame_is_measured_in_utf8_bytes_not_characters():
    # a str is encoded only when its length can't decide: 4-byte characters under the cap in
    # characters but over it in bytes are refused, and the same frame one character shorter isn't
    cap = 1000
    head, tail = '{"id":1,"type":"ping","payload":{"s":"', '"}}'
    fits = (cap - len(head) - len(tail)) // 4
    ok = head + "\U0001F3B5" * fits + tail
    over = head + "\U0001F3B5" * (fits + 1) + tail
    assert len(ok.encode()) <= cap < len(over.encode()) and len(over) < cap
    assert decode_frame(ok, JSON, max_bytes=cap).type == MessageType.PING
    with pytest.raises(SyncopateError) as e:
        decode_frame(over, JSON, max_bytes=cap)
    assert e.value.code == ErrorCode.FRAME_TOO_LARGE
    for typ, msg in (("nope", "unknown message type"), ("player.changed", "is not a client request")):
        with pytest.raises(SyncopateError) as e:
            decode_frame(f'{{"id":1,"type":"{typ}"}}', JSON)
        assert e.value.code == ErrorCode.UNKNOWN_MESSAGE_TYPE and msg in e.value.message


def test_check_plain_for_other_modules():
    decode.check_plain({"uris": ["spotify:track:x"], "n": 1, "b": b"", "f": 0.5, "x": None})
    for bad in [(1, 2), {1: 2}, msgpack.ExtType(1, b""), 2 ** 64, float("inf"), {"x": {1, 2}}, deep(40)]:
        with pytest.raises(SyncopateError) as e:
            decode.check_plain({"a": bad}, where="args")
        assert e.value.code == ErrorCode.INVALID_FIELD and e.value.message.startswith("args")


# -- valid envelopes round-trip ------------------------------------------------------------------

PLAIN_LEAF = (st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63 - 1)
              | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e18, max_value=1e18) | TEXT)
REQUEST = st.fixed_dictionaries({
    "id": st.integers(-2 ** 63, 2 ** 63 - 1) | TEXT,
    "type": st.sampled_from(sorted(t.value for t in CLIENT_TYPES)),
    "payload": st.dictionaries(TEXT, nested(PLAIN_LEAF), max_size=5),
}, optional={"op_id": st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=128)})


@FUZZ
@given(REQUEST, st.dictionaries(TEXT, st.binary(max_size=30), max_size=3))
def test_valid_envelopes_roundtrip(msg, blobs):
    for encoding, frame in [(JSON, dumps_json(msg).decode()), (MSGPACK, encode_frame(msg, MSGPACK)),
                            (MSGPACK, encode_frame({**msg, "payload": {**msg["payload"], **{"b" + k: v for k, v in
                                                                                           blobs.items()}}}, MSGPACK))]:
        env = decode_frame(frame, encoding)
        assert env.type.value == msg["type"] and env.id == msg["id"] and env.op_id == msg.get("op_id")
        expected = msgpack.unpackb(frame, raw=False) if encoding == MSGPACK else msg
        assert env.payload == expected["payload"]


# -- decoding time is linear in the input -------------------------------------------------------------

def _best(fn, data, reps=5) -> float:
    best = math.inf
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t0)
    return best


def growth(fn, make, n: int, k: int = 8) -> float:
    """How much longer `fn` takes on an input k times larger. Linear: about k. Quadratic: about k**2."""
    fn(make(n))                          # warm up
    return _best(fn, make(k * n)) / _best(fn, make(n))


def _decode(encoding):
    def fn(data):
        try:
            decode_frame(data, encoding)
        except SyncopateError:
            pass
    return fn


def _frame(payload, encoding):
    msg = {"id": 1, "type": "ping", "payload": payload}
    return json.dumps(msg).encode() if encoding == JSON else msgpack.packb(msg)


# shape -> (payload of size n, n). The sizes keep the larger input (8n) within the decoder's
# limits and small enough to stay in cache: past that, memory effects alone double the ratio.
SHAPES = {
    "long array": (lambda n: {"a": [0] * n}, 4000),
    "long array of strings": (lambda n: {"a": ["spotify:track:0000000000000000000000"] * n}, 2000),
    "wide map": (lambda n: {f"k{i}": i for i in range(n)}, 1000),
    "siblings at the depth limit": (lambda n: {"a": [deep(29)] * n}, 200),
    "siblings, the last one too deep": (lambda n: {"a": [deep(29)] * n + [deep(40)]}, 200),
    "many small maps": (lambda n: {"a": [{"x": 1, "y": [None, True]}] * n}, 1000),
}
LINEAR_BOUND = 24        # for k = 8: a linear decoder measures ~8 (up to ~20 seen on a loaded machine), a quadratic one ~64


@pytest.mark.parametrize("encoding", [JSON, MSGPACK])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_decoding_time_is_linear(shape, encoding):
    make, n = SHAPES[shape]
    ratio = growth(_decode(encoding), lambda m: _frame(make(m), encoding), n)
    assert ratio < LINEAR_BOUND, f"{shape} ({encoding}): 8x the input took {ratio:.1f}x the time"


def test_the_linearity_check_catches_a_quadratic_decoder():
    """The measurement above can fail: a decoder doing quadratic work on the same input fails it."""
    def quadratic(data):
        _decode(JSON)(data)
        m = len(data) // 32                      # e.g. a check that re-scans what came before
        sum(1 for i in range(m) for _ in range(i))
    make, n = SHAPES["long array"]
    ratio = growth(quadratic, lambda m: _frame(make(m), JSON), n)
    assert ratio >= LINEAR_BOUND, ratio
