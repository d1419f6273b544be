"""What the counts store keeps of an erased user (docs/data-rights.md, "Stream counts and the event
pipeline"): the per-track, per-day counts stay, and so must a record reconcile can recount them
from (syncopate/events/reconcile.py recounts distinct play ids with a stream event in ev_events).

So, in one transaction of the counts store (syncopate/events/counts.py `forget_user`):
  - the user's events that are not streams are deleted (they count nothing);
  - their stream events stay, anonymised: user_id becomes the anonymous id, `key` and `play_id`
    become keyed hashes under a random salt that is never stored (each play stays distinct, the
    events of one play keep one play id, so the recount is exact; the plays of one deleted user can
    no longer be tied together, nor to the user), the time of day goes (`played_at_ms` and
    `received_ms` become the day's midnight UTC; the day is the count's), and device, context,
    market and product become NULL;
  - their counted plays (ev_counted, the dedupe markers) are anonymised the same way, with the same
    play id mapping.
Track, day, ms_played, stream, private and source stay: none of them names anyone.
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass


@dataclass
class Forgotten:
    anonymised: int = 0          # stream events kept without the user
    deleted: int = 0             # events that were not streams, deleted
    plays: int = 0               # counted plays (markers) anonymised

    def to_dict(self) -> dict:
        return {"anonymised": self.anonymised, "deleted": self.deleted, "plays": self.plays}


def day_start_ms(day: str) -> int:
    return calendar.timegm(time.strptime(day, "%Y-%m-%d")) * 1000


class Pseudonyms:
    """Keyed hashes under a salt made here and dropped with this object (never stored)."""

    def __init__(self, anonymous_id: str) -> None:
        self.anonymous_id = anonymous_id
        self._salt = secrets.token_bytes(32)

    def __call__(self, value: str) -> str:
        return f"{self.anonymous_id}/{hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()[:32]}"


def event_updates(ps: Pseudonyms, rows) -> list[tuple]:
    """rows: (seq, key, play_id, day) of the user's stream events -> the UPDATE parameters, in the
    order of EVENT_SET + (seq,)."""
    return [(ps.anonymous_id, ps(k), ps(pl), day_start_ms(d), day_start_ms(d), seq) for seq, k, pl, d in rows]


def counted_updates(ps: Pseudonyms, rows) -> list[tuple]:
    """rows: (play_id, day) of the user's counted plays -> the parameters of COUNTED_SET + (play_id,)."""
    return [(ps(pl), ps.anonymous_id, day_start_ms(d), pl) for pl, d in rows]


EVENT_SET = ("user_id = {}, key = {}, play_id = {}, played_at_ms = {}, received_ms = {}, product = NULL,"
             " market = NULL, context_uri = NULL, device_id = NULL WHERE seq = {}")
COUNTED_SET = "play_id = {}, user_id = {}, played_at_ms = {}, context_uri = NULL WHERE play_id = {}"


def placeholders(template: str, style: str) -> str:
    """The template with SQLite's `?` or PostgreSQL's `$1..$n`."""
    n = template.count("{}")
    return template.format(*(["?"] * n if style == "?" else [f"${i + 1}" for i in range(n)]))
