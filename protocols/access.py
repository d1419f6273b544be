"""Who may read or write a playlist: one pure rule, shared by the playlist entity (which enforces
it on every command) and the gateway (which applies it to live connections when the entity pushes
`playlist.access`).

A policy is a plain dict, as the entity sends it (subscribe / yjs_sync replies under "access", and
the `playlist.access` push):

    {"owner": user id, "public": bool, "collaborative": bool, "roles": {user id: "editor" | "viewer"}}

- the owner and editors write (tracks, name, description); viewers read;
- anyone else reads a public playlist and has no access to a private one (it is NOT_FOUND to them);
- `collaborative` is informational (Spotify's field): roles decide who edits.
Only the owner changes public, collaborative and the roles (`role(...) == "owner"`).
"""
from __future__ import annotations

from typing import Any

NONE, READ, WRITE = "none", "read", "write"
ROLES = ("editor", "viewer")


def policy(owner: str | None, public: bool, collaborative: bool, roles: dict[str, str]) -> dict:
    return {"owner": owner, "public": bool(public), "collaborative": bool(collaborative), "roles": dict(roles)}


def role(policy: dict[str, Any] | None, user_id: str | None) -> str | None:
    """"owner", "editor", "viewer" or None (no role: a stranger)."""
    if not policy or user_id is None:
        return None
    if policy.get("owner") is not None and user_id == policy.get("owner"):
        return "owner"
    r = (policy.get("roles") or {}).get(user_id)
    return r if r in ROLES else None


def access(policy: dict[str, Any] | None, user_id: str | None) -> str:
    """"none", "read" or "write". No policy (no such playlist) is "none"."""
    if not policy or policy.get("owner") is None:
        return NONE
    r = role(policy, user_id)
    if r in ("owner", "editor"):
        return WRITE
    if r == "viewer" or policy.get("public") is True:
        return READ
    return NONE
