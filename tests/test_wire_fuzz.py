"""The typed wire's decoders (protocols/wire.py, actors/channel.py) on arbitrary input: nothing but the
documented error (a SyncopateError: MALFORMED_FRAME) ever comes out of them, and valid values
round-trip. These decoders read what an authenticated gateway or host sent, but the payloads inside
were written by clients, so they must be total."""
from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.channel import decode_requests
from actors.entity import Command, Principal
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import (ConnAddress, Gap, Push, Reply, WireError, answer, command_from_wire, command_to_wire,
                            host_item_from_wire, host_item_to_wire, pack_body, unpack_body)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=6)),
                      max_leaves=30)
# what msgpack can carry but a plain value must not: extension types of any code
hostile = st.recursive(st.one_of(scalars, st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))),
                       lambda inner: st.one_of(st.lists(inner, max_size=6),
                                               st.dictionaries(st.text(max_size=8), inner, max_size=6)),
                       max_leaves=30)


@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=200))
def test_unpack_body_of_any_bytes_raises_only_wire_error(data):
    try:
        unpack_body(data)
    except WireError as err:
        assert err.code == ErrorCode.MALFORMED_FRAME


@settings(max_examples=120, deadline=None)
@given(hostile)
def test_decoded_values_never_hold_an_extension_type(value):
    data = msgpack.packb(value, use_bin_type=True)
    try:
        out = unpack_body(data)
    except WireError:
        return
    assert not _has_ext(out)


def _has_ext(v) -> bool:
    if isinstance(v, msgpack.ExtType):
        return True
    if isinstance(v, list):
        return any(_has_ext(x) for x in v)
    if isinstance(v, dict):
        return any(_has_ext(x) for x in v.values())
    return False


@settings(max_examples=120, deadline=None)
@given(values)
def test_any_value_as_a_command_or_a_host_item_raises_only_the_documented_error(value):
    for decode in (command_from_wire, host_item_from_wire):
        try:
            decode(value)
        except SyncopateError as err:
            assert err.code == ErrorCode.MALFORMED_FRAME
        except Exception as exc:      # anything else is a crash of the stream's reader
            raise AssertionError(f"{decode.__name__}({value!r}) raised {type(exc).__name__}: {exc}")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(values, st.tuples(st.just("c"), st.integers(0, 10**6), st.binary(max_size=40)).map(list)),
                max_size=8))
def test_a_gateway_frame_of_anything_is_split_into_commands_and_per_token_refusals(frame):
    good, bad = decode_requests(frame)
    assert all(isinstance(c, Command) for _, c in good)
    assert all(e.code == ErrorCode.MALFORMED_FRAME for _, e in bad)


@settings(max_examples=80, deadline=None)
@given(values, st.text(min_size=1, max_size=10), st.one_of(st.none(), st.text(min_size=1, max_size=10)))
def test_commands_and_items_round_trip(args, user, op_id):
    cmd = Command("playlist", "p", "add", {"x": args}, Principal(user, "free", None, False, 7, 0), op_id=op_id,
                  origin=ConnAddress("g", "c1"), follow=True)
    back = command_from_wire(unpack_body(pack_body(command_to_wire(cmd))))
    assert (back.kind, back.op, back.args, back.op_id, back.origin, back.follow) == \
        (cmd.kind, cmd.op, cmd.args, cmd.op_id, cmd.origin, cmd.follow)
    assert back.principal.user_id == user
    for item in (Push("playlist:p", 3, "playlist.changed", args, user, ConnAddress("g", "c"), True, True, 2),
                 Gap("playlist:p", 3), answer(5, Reply(3, args))):
        assert host_item_from_wire(unpack_body(pack_body(host_item_to_wire(item)))) == item
