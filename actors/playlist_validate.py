"""Validation for the playlist entity: command arguments, metadata values, and entries written by
Yjs clients. Pure functions; every refusal is a SyncopateError (or, for Yjs values, a reason).
Plain arguments (integers, booleans) are actors/args.py's, as in every entity; a track's existence
is catalog.require's."""
from __future__ import annotations

import math
import re
from typing import Any

from typing import TYPE_CHECKING

from catalog import require
from protocols.errors import ErrorCode, SyncopateError

if TYPE_CHECKING:
    from actors.playlist_entries import Entry

# the document's schema (docs/playlist-document.md)
ENTRY_KEYS = ("id", "uri", "added_by", "added_at")
ENTRY_KEYSET = frozenset(ENTRY_KEYS)
META_KEYS = ("name", "description", "public", "collaborative")
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()     # a key not set

MAX_ENTRIES = 10_000          # entries per playlist (Spotify's limit)
MAX_URIS = 100                # uris per add / replace, tracks per remove
MAX_PAGE = 100                # items per page
NAME_MAX = 200
DESCRIPTION_MAX = 300
USER_ID_MAX = 128
ROLES = ("editor", "viewer")
OWNER_META = frozenset({"public", "collaborative"})      # only the owner changes these
FUTURE_SLACK_MS = 86_400_000                              # client clocks may run ahead by a day
ENTRY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def bad(message: str, code: ErrorCode = ErrorCode.INVALID_FIELD, **details) -> SyncopateError:
    return SyncopateError(code, message, **details)


def name_value(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise bad("name must be a non-empty string")
    if len(v) > NAME_MAX:
        raise bad(f"name is longer than {NAME_MAX} characters", ErrorCode.BAD_REQUEST)
    return v


def description_value(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise bad("description must be a string")
    if len(v) > DESCRIPTION_MAX:
        raise bad(f"description is longer than {DESCRIPTION_MAX} characters", ErrorCode.BAD_REQUEST)
    return v


def user_id_value(v: Any, key: str = "user_id") -> str:
    if not isinstance(v, str) or not v or len(v) > USER_ID_MAX:
        raise bad(f"{key} must be a user id")
    return v


def meta_problem(key: str, value: Any) -> str | None:
    """Why a `meta` value is invalid, or None."""
    try:
        if key == "name":
            name_value(value)
        elif key == "description":
            if value is None:
                return "description must be a string"
            description_value(value)
        elif key in ("public", "collaborative"):
            if not isinstance(value, bool):
                return f"{key} must be a boolean"
        else:
            return f"unknown meta key {key!r}"
    except SyncopateError as err:
        return err.message
    return None


def uri_list(args: dict, key: str = "uris", *, allow_empty: bool = False) -> list[str]:
    v = args.get(key)
    if isinstance(v, str):
        v = [u for u in (p.strip() for p in v.split(",")) if u]
    if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
        raise bad(f"{key} must be a list of Spotify uris")
    if not v and not allow_empty:
        raise bad(f"{key} must not be empty", ErrorCode.BAD_REQUEST)
    if len(v) > MAX_URIS:
        raise bad(f"at most {MAX_URIS} {key} per request, got {len(v)}", ErrorCode.BAD_REQUEST)
    return v


def entry_problem(e: Entry, *, user_id: str | None, now_ms: int, catalog: Any,
                  template: Entry | None) -> tuple[ErrorCode, str] | None:
    """Why an entry written by a Yjs client is invalid, or None.

    `template` is the entry this one copies (same id: a move, or an undo of a delete); a copy must
    carry the same uri, added_by and added_at. A new id must be a valid track of the catalog,
    added_by the writer's user id, and added_at a plausible unix time in milliseconds."""
    if not e.is_map:
        return ErrorCode.INVALID_FIELD, "a track entry must be a Y.Map"
    missing = [k for k, v in (("id", e.id), ("uri", e.uri), ("added_by", e.added_by), ("added_at", e.added_at))
               if v is MISSING]
    if missing:
        return ErrorCode.INVALID_FIELD, f"entry lacks {', '.join(missing)}"
    if e.extra:
        return ErrorCode.INVALID_FIELD, f"entry has unknown keys {sorted(e.extra)}"
    if not e.well_shaped():
        return ErrorCode.INVALID_FIELD, "entry fields have wrong types (id, uri, added_by: string; added_at: number)"
    if not ENTRY_ID.match(e.id):
        return ErrorCode.INVALID_FIELD, f"invalid entry id {e.id!r}"
    if template is not None:
        if not e.same_content(template):
            return ErrorCode.INVALID_FIELD, f"entry {e.id} copies an existing entry id with different content"
        return None
    try:
        require(catalog, e.uri)
    except SyncopateError as err:
        return err.code, err.message
    if user_id is not None and e.added_by != user_id:
        return ErrorCode.FORBIDDEN, f"added_by must be the writer's user id ({user_id}), got {e.added_by!r}"
    at = e.added_at
    if not math.isfinite(at) or at < 0 or (now_ms > 0 and at > now_ms + FUTURE_SLACK_MS):
        return ErrorCode.INVALID_FIELD, f"added_at {at!r} is not a plausible unix time in ms"
    return None
