"""The op registry (actors/entity.py `@op`) against the docs' op tables, and the one dispatch.

Every op an entity declares is documented, every documented op exists, and what a table says about
who may call it and which arguments it takes is what the declaration says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.devicegroup import DeviceGroupEntity
from actors.devicegroup_market import PLAYBACK_MARKET_OPS, market_ask
from actors.entity import SYSTEM, Command, Env, OpSpec, Principal
from actors.playlist import PlaylistEntity
from actors.session import SessionEntity
from protocols.errors import ErrorCode, SyncopateError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def who(spec: OpSpec) -> str:
    if spec.system:
        return "system"
    return ", ".join([spec.role or "anyone"] + ["premium"] * spec.control + ["fenced"] * spec.fenced)


def tables(path: Path, *header: str) -> list[list[str]]:
    """The rows (cells) of every table of `path` whose header begins with the columns `header`."""
    rows, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not inside and tuple(cells[:len(header)]) == header:
                inside = "header"
            elif inside == "header":
                inside = True                      # the |---| line
            elif inside:
                rows.append(cells)
        else:
            inside = False
    return rows


def names(cell: str) -> list[str]:
    return [n.strip(" `") for n in re.split(r"[,/]", cell) if n.strip(" `")]


def documented(path: Path, *header: str) -> dict[str, list[str]]:
    out = {}
    for row in tables(path, *header):
        for n in names(row[0]):
            out[n] = row
    return out


@pytest.mark.parametrize("entity,doc", [(DeviceGroupEntity, "connect.md"), (PlaylistEntity, "playlist-document.md")])
def test_op_tables_with_a_who_column_match_the_registry(entity, doc):
    rows = documented(DOCS / doc, "op", "who", "args")
    assert sorted(rows) == sorted(entity.ops)
    for name, spec in entity.ops.items():
        row = rows[name]
        assert row[1] == who(spec), name
        for arg in spec.args or ():
            assert arg in row[2], (name, arg)


def test_session_tables_match_the_registry():
    path = DOCS / "sessions.md"
    rows = documented(path, "op", "args")
    assert sorted(rows) == sorted(SessionEntity.ops)
    for name, spec in SessionEntity.ops.items():
        for arg in spec.args or ():
            assert arg in rows[name][1], (name, arg)
    system = {n for row in tables(path, "op", "caller") if row[1].startswith("system only") for n in names(row[0])}
    assert system == {n for n, s in SessionEntity.ops.items() if s.system}
    assert all(s.role == "user" for s in SessionEntity.ops.values() if not s.system)


def test_the_flags_are_the_ones_the_device_group_enforced():
    ops = DeviceGroupEntity.ops
    control = {"transfer", "play", "pause", "next", "previous", "seek", "repeat", "shuffle", "volume", "queue_add"}
    assert {n for n, s in ops.items() if s.control} == control
    assert {n for n, s in ops.items() if s.fenced} == control | {"update_device"}
    assert {n for n, s in ops.items() if s.system} == {"disconnect", "context_changed", "catalog_changed",
                                                       "market_changed"}
    assert {n for n, s in PlaylistEntity.ops.items() if s.system} == {"add_listener", "remove_listener", "forget_user"}
    # the commands that may start a track read the account's market first when the group has none
    asking = {n for n, s in ops.items() if market_ask in (s.ask if isinstance(s.ask, tuple) else (s.ask,))}
    assert asking == set(PLAYBACK_MARKET_OPS)


def _entity(cls, ident="alice"):
    return cls(ident, Env(catalog=None, config={}))


@pytest.mark.parametrize("cls", [DeviceGroupEntity, PlaylistEntity, SessionEntity])
def test_one_dispatch_one_code_per_mistake(cls):
    e = _entity(cls)
    alice = Principal(user_id="alice")

    def code(op, args, principal=alice):
        with pytest.raises(SyncopateError) as ei:
            e.handle(Command(cls.kind, "alice", op, args, principal=principal))
        return ei.value.code

    assert code("no_such_op", {}) is ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert code("no_such_op", {}, SYSTEM) is ErrorCode.UNKNOWN_MESSAGE_TYPE
    some_op = next(iter(cls.ops))
    assert code(some_op, ["not", "an", "object"]) is ErrorCode.INVALID_FIELD
    for name, spec in cls.ops.items():
        if spec.system:
            assert code(name, {}) is ErrorCode.FORBIDDEN, name
    assert e.version == 0


@pytest.mark.parametrize("cls,op,args,field", [
    (DeviceGroupEntity, "recently_played", {}, "limit"),
    (SessionEntity, "library_list", {"type": "track"}, "limit"),
    (PlaylistEntity, "items", {}, "limit"),
])
def test_the_same_integer_mistake_gets_the_same_code_everywhere(cls, op, args, field):
    e = _entity(cls)
    if cls is PlaylistEntity:
        e.handle(Command(cls.kind, "alice", "create", {"name": "x"}, principal=Principal(user_id="alice")))
    results = {}
    for label, value in (("range", 10_000), ("type", "ten"), ("bool", True)):
        with pytest.raises(SyncopateError) as ei:
            e.handle(Command(cls.kind, "alice", op, {**args, field: value}, principal=Principal(user_id="alice")))
        results[label] = ei.value.code
    assert results == {"range": ErrorCode.BAD_REQUEST, "type": ErrorCode.INVALID_FIELD,
                       "bool": ErrorCode.INVALID_FIELD}
    out = e.handle(Command(cls.kind, "alice", op, {**args, field: 5.0}, principal=Principal(user_id="alice")))
    assert out.reply["limit"] == 5 and type(out.reply["limit"]) is int
