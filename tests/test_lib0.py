"""protocols/lib0.py and protocols/yjs.py: one bounded, linear-time reader. Random input never
raises anything but lib0.MalformedError (a SyncopateError, MALFORMED_FRAME); encodings round-trip;
and long varint runs are refused fast (pycrdt's Decoder took ~2.6 s on 200 KB of 0xFF)."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from protocols import lib0, yjs
from protocols.errors import ErrorCode, SyncopateError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODERS = {
    "parse_frame": yjs.parse_frame,
    "parse_awareness": yjs.parse_awareness,
    "decode_state_vector": lib0.decode_state_vector,
    "scan_update": lambda b: lib0.scan_update(b, structs=True),
    "read_any": lambda b: lib0.read_any(b, 0),
    "read_var_string": lambda b: lib0.read_var_string(b, 0),
    "read_var_int": lambda b: lib0.read_var_int(b, 0),
}


def only_malformed(fn, data: bytes) -> None:
    try:
        fn(data)
    except lib0.MalformedError as err:
        assert isinstance(err, SyncopateError) and err.code == ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_the_documented_error(name, data):
    only_malformed(DECODERS[name], data)


def _real_update() -> bytes:
    d = Doc(client_id=7)
    tracks = d.get("tracks", type=Array)
    for i in range(3):
        tracks.append(Map({"id": f"e{i}", "uri": "u", "added_by": "a", "added_at": 1.0}))
    d.get("junk", type=Text).insert(0, "a\U0001F600b")
    d.get("junk2", type=Map)["k"] = {"a": [1, 2.5, None, True, "x"], "b": -300}
    del tracks[1]
    return d.get_update()


REAL = _real_update()


@pytest.mark.parametrize("name", ["scan_update", "parse_frame"])
@FUZZ
@given(st.data())
def test_mutated_real_input_raises_only_the_documented_error(name, data):
    base = REAL if name == "scan_update" else yjs.sync_step2(REAL) + yjs.awareness(
        yjs.encode_awareness([(1, 2, '{"user":"x"}')]))
    b = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        if how == "flip" and b:
            b[i] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del b[i:]
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=12))
    only_malformed(DECODERS[name], bytes(b))


@FUZZ
@given(st.integers(0, 2**70 - 1), st.integers(-(2**63), 2**63))
def test_var_uint_roundtrip(n, _):
    b = lib0.write_var_uint(n)
    assert lib0.read_var_uint(b + b"\x00", 0) == (n, len(b))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2**53), st.integers(0, 2**53), st.text(max_size=40)), max_size=8))
def test_awareness_roundtrip(entries):
    assert yjs.parse_awareness(yjs.encode_awareness(entries)) == entries


@FUZZ
@given(st.dictionaries(st.integers(0, 2**32), st.integers(0, 2**40), max_size=10))
def test_state_vector_roundtrip(sv):
    assert lib0.decode_state_vector(lib0.encode_state_vector(sv)) == sv


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["s1", "s2", "u"]), st.binary(max_size=50)), max_size=6))
def test_frames_roundtrip(msgs):
    make = {"s1": yjs.sync_step1, "s2": yjs.sync_step2, "u": yjs.update}
    sub = {"s1": 0, "s2": 1, "u": 2}
    frame = b"".join(make[k](p) for k, p in msgs)
    assert yjs.parse_frame(frame) == [yjs.YMessage(0, sub[k], p) for k, p in msgs]


def test_frames_agree_with_pycrdt():
    from pycrdt import create_awareness_message, create_update_message
    assert yjs.update(REAL) == create_update_message(REAL)
    assert yjs.awareness(b"xyz") == create_awareness_message(b"xyz")


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.text(max_size=10) | st.floats(allow_nan=False),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                    max_leaves=20))
def test_any_values_from_yjs_are_read(value):
    d = Doc(client_id=3)
    d.get("m", type=Map)["k"] = value
    s = lib0.scan_update(d.get_update(), structs=True)
    assert s.ends == {3: 1} and s.structs[0][3] == lib0.ROOT and s.structs[0][4] == ("m", True)


def test_scan_update_matches_yjs_clocks_and_deletes():
    s = lib0.scan_update(REAL)
    assert s.ends == {7: max(s.ends.values())} and s.deletes == [(7, 5, 5)]


def test_overlong_varints_are_refused():
    with pytest.raises(lib0.MalformedError):
        lib0.read_var_uint(b"\xff" * 10 + b"\x01", 0)
    assert lib0.read_var_uint(b"\xff" * 9 + b"\x01", 0)[1] == 10
    with pytest.raises(lib0.MalformedError):
        lib0.read_var_bytes(b"\x05abc", 0)                 # longer than what remains
    with pytest.raises(lib0.MalformedError):
        lib0.read_var_bytes(b"\x03abc", 0, max_len=2)
    with pytest.raises(lib0.MalformedError):
        lib0.read_any(b"\x75\x01" * 100 + b"\x7e", 0)      # nested deeper than MAX_DEPTH


@pytest.mark.parametrize("name", ["parse_frame", "parse_awareness", "decode_state_vector", "scan_update"])
def test_long_ff_runs_are_refused_in_linear_time(name):
    """pycrdt's Decoder (and the old read_var_uint) built one ever-growing integer from a 0xFF run:
    quadratic, 200 KB took seconds. Bounded at 10 bytes, the run is refused at once."""
    fn = DECODERS[name]
    for size in (20_000, 200_000):
        data = b"\x00\x00" + b"\xff" * size if name == "parse_frame" else b"\xff" * size
        t0 = time.perf_counter()
        with pytest.raises(lib0.MalformedError):
            fn(data)
        assert time.perf_counter() - t0 < 0.05, (name, size)


def test_many_short_varints_scan_linearly():
    """A frame of many small messages: time grows with size, not its square."""
    def timed(n):
        frame = yjs.update(b"\x00\x00") * n
        t0 = time.perf_counter()
        assert len(yjs.parse_frame(frame)) == n
        return time.perf_counter() - t0
    small, big = min(timed(5_000) for _ in range(3)), min(timed(50_000) for _ in range(3))
    assert big < small * 10 * 3.5          # linear: ~10x; quadratic: ~100x
