"""Who may read and who may write a playlist: one rule, used by the playlist entity when it answers
and by the gateway when a policy change reaches connections that are already open.

A policy is a plain value: {"owner": user id, "public": bool, "collaborators": {user id: role}},
role "editor" or "viewer". The owner and editors write; viewers and, on a public playlist,
everyone read; nobody else sees it (and it answers NOT_FOUND to them, so its existence leaks no
more than its content).
"""
from __future__ import annotations

from typing import Any

WRITE_ROLES = frozenset({"owner", "editor"})


def level(policy: Any, user_id: str) -> str:
    """"write", "read" or "none" for `user_id` under `policy`."""
    if not isinstance(policy, dict):
        return "none"
    if user_id == policy.get("owner"):
        return "write"
    role = (policy.get("collaborators") or {}).get(user_id)
    if role in WRITE_ROLES:
        return "write"
    if role is not None or policy.get("public"):
        return "read"
    return "none"
