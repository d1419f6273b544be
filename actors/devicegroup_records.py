"""What a device group persists: one `GroupChange` per committed command, and `GroupSnapshot`.

Both are versioned dataclasses with readable field names; `to_wire` gives the msgpack-able value the
host stores, `from_wire` reads every form ever stored:

  version 2 (today)   {"v": 2, "player": {...changed fields}, "devices": {id: device | None},
                       "active": id | None, "last_active": id | None, "revision": n, "fence": n,
                       "play": {event_id, play_key, track_uri, played_at_ms, context_uri, private?},
                       "events": [accepted listening event (protocols/listening.py wire form)]}
                       "market": {"country": "SE" | None, "as_of": account version | None,
                                  "explicit_filter": true (absent: off)}}
                      (only the fields the change touched are present; "events", "play.private",
                      "market" and the snapshot's "plays" and "market" came later within version 2:
                      absent means none / unchanged)
  version 1 (before)  {"p", "d", "a", "la", "r", "f", "ev", "pk", "st", "rp": [at, uri, ctx]}
                      with the player's short names (actors/player_state.py LEGACY_NAMES)

The market (docs/rights.md "The account facts a device group holds"): the account entity tells
the group its country and its explicit content filter (`market_changed`, an effect), or the group
asks for them; `as_of` is the account version they are from, so a late or repeated notice never
replaces a newer one. `explicit_filter` is written only when on (absent: off; a record or notice
from before the filter existed has it off). Records and snapshots written before the market was
the group's own carried the gateway's stamps of each playback command as the player fields
`market` (and, for a while, `explicit_filter`): they are read back as `UserMarket(country, as_of=None,
explicit_filter)`, facts not learned from the account, which the next playback command asks for; a
record's stamp that lacks one of the two leaves it as it was (None in the record). The player dict
keeps `market` and `explicit_filter` as mirrors of the UserMarket for the pure state machine
(`MIRRORED`); they are never written as player fields again.

A snapshot of version 1 was {"v": 1, "devices", "active", "last_active", "p", "revision", "fence",
"recent", "streams", "counted_events", "counted_plays", "play_floor"}; version 2 names the player
"player" and its fields as above. A device is a dict (id, name, type, volume_percent,
supports_volume, is_restricted, online, off_since, conn) whose `conn` is a ConnAddress in memory and
[gateway, connection] on the wire; every stored form of an address is read back (ConnAddress.parse).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.args import address
from actors.player_state import LEGACY_NAMES, new_player
from protocols.wire import ConnAddress

RECORD_VERSION = 2
SNAPSHOT_VERSION = 2


class _Keep:
    """`active` / `last_active` not changed (None is a value: no device)."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def player_from_wire(p: dict) -> dict:
    """Player fields in today's names, from either spelling."""
    return {LEGACY_NAMES.get(k, k): v for k, v in p.items()}


# the player fields that mirror the UserMarket (never stored as player fields)
MIRRORED = ("market", "explicit_filter")


@dataclass(frozen=True)
class UserMarket:
    """The account facts the group plays by: the account's country (None: not known), the account
    version they are from (None: not learned from the account; the next playback command asks),
    and the account's explicit content filter (on: explicit tracks do not play). `explicit_filter`
    None only in a record of the gateway's stamp that did not carry it (see the module doc)."""
    country: str | None = None
    as_of: int | None = None
    explicit_filter: bool | None = False

    def to_wire(self) -> dict:
        out: dict[str, Any] = {"country": self.country, "as_of": self.as_of}
        if self.explicit_filter is not False:
            out["explicit_filter"] = self.explicit_filter
        return out

    @classmethod
    def from_wire(cls, d: dict) -> UserMarket:
        return cls(d.get("country"), d.get("as_of"), d.get("explicit_filter", False))

    def mirror(self) -> dict:
        """The player fields that mirror it (MIRRORED)."""
        return {"market": self.country, "explicit_filter": bool(self.explicit_filter)}

    def over(self, before: UserMarket) -> UserMarket:
        """This record's market applied over the one held: a gateway stamp (as_of None) that lacks
        the country or the filter leaves it as it was."""
        if self.as_of is not None:
            return self
        return UserMarket(self.country if self.country is not None else before.country, None,
                          self.explicit_filter if self.explicit_filter is not None else before.explicit_filter)

    def newer(self, other: UserMarket) -> bool:
        """Does `other` (a notice or an answer of the account) replace this one?"""
        return other.as_of is not None and (self.as_of is None or other.as_of > self.as_of)


def _split_market(player: dict, market: dict | None) -> tuple[dict, UserMarket | None]:
    """A stored player dict and market field -> (the player without its mirrors, the market). A
    player `market` / `explicit_filter` without a market field is the gateway's stamp of before:
    not from the account (a field the stamp lacks is None: unchanged)."""
    if not any(k in player for k in MIRRORED):
        return player, UserMarket.from_wire(market) if market is not None else None
    player = dict(player)
    stamp = {k: player.pop(k) for k in MIRRORED if k in player}
    if market is not None:
        return player, UserMarket.from_wire(market)
    return player, UserMarket(stamp.get("market"), None, stamp.get("explicit_filter"))


def device_from_wire(d: dict) -> dict:
    conn = d.get("conn")
    if conn is not None and not isinstance(conn, ConnAddress):
        d = {**d, "conn": address(conn)}
    return d


def device_to_wire(d: dict) -> dict:
    conn = d.get("conn")
    return {**d, "conn": list(conn)} if conn is not None else dict(d)


@dataclass
class CountedPlay:
    """A listening report that counted as a stream (exactly once: by event id and by play key)."""
    event_id: str
    play_key: Any                 # the playback id it names (int), or "e:<event_id>"
    track_uri: str
    played_at_ms: int
    context_uri: str | None
    private: bool = False         # in a private session: counted, not in recently played

    def recent(self) -> list:
        return [self.played_at_ms, self.track_uri, self.context_uri]


@dataclass
class GroupChange:
    player: dict = field(default_factory=dict)              # the player fields that changed
    devices: dict[str, dict | None] = field(default_factory=dict)   # None: removed
    active: Any = KEEP
    last_active: Any = KEEP
    revision: int | None = None
    fence: int | None = None
    play: CountedPlay | None = None
    events: list = field(default_factory=list)     # accepted listening events (ListeningEvent wire form)
    market: UserMarket | None = None               # None: unchanged

    def __bool__(self) -> bool:
        return bool(self.player or self.devices or self.active is not KEEP or self.last_active is not KEEP
                    or self.revision is not None or self.fence is not None or self.play is not None
                    or self.events or self.market is not None)

    def to_wire(self) -> dict:
        out: dict[str, Any] = {"v": RECORD_VERSION}
        if self.player:
            out["player"] = self.player
        if self.devices:
            out["devices"] = {did: device_to_wire(d) if d is not None else None for did, d in self.devices.items()}
        if self.active is not KEEP:
            out["active"] = self.active
        if self.last_active is not KEEP:
            out["last_active"] = self.last_active
        if self.revision is not None:
            out["revision"] = self.revision
        if self.fence is not None:
            out["fence"] = self.fence
        if self.play is not None:
            pl = self.play
            out["play"] = {"event_id": pl.event_id, "play_key": pl.play_key, "track_uri": pl.track_uri,
                           "played_at_ms": pl.played_at_ms, "context_uri": pl.context_uri}
            if pl.private:
                out["play"]["private"] = True
        if self.events:
            out["events"] = list(self.events)
        if self.market is not None:
            out["market"] = self.market.to_wire()
        return out

    @classmethod
    def from_wire(cls, rec: dict) -> GroupChange:
        if rec.get("v") == RECORD_VERSION:
            pl = rec.get("play")
            player, market = _split_market(dict(rec.get("player") or {}), rec.get("market"))
            return cls(player=player, market=market,
                       devices={did: device_from_wire(d) if d is not None else None
                                for did, d in (rec.get("devices") or {}).items()},
                       active=rec.get("active", KEEP), last_active=rec.get("last_active", KEEP),
                       revision=rec.get("revision"), fence=rec.get("fence"),
                       play=CountedPlay(**pl) if pl is not None else None,
                       events=list(rec.get("events") or ()))
        if "v" in rec:
            raise ValueError(f"unknown device group record version {rec['v']!r}")
        play = None
        if "ev" in rec:                      # version 1: a counted listening event
            at, uri, ctx = rec["rp"]
            play = CountedPlay(rec["ev"], rec["pk"], rec["st"], at, ctx)
        player, market = _split_market(player_from_wire(rec.get("p") or {}), None)
        return cls(player=player, market=market,
                   devices={did: device_from_wire(d) if d is not None else None
                            for did, d in (rec.get("d") or {}).items()},
                   active=rec.get("a", KEEP), last_active=rec.get("la", KEEP),
                   revision=rec.get("r"), fence=rec.get("f"), play=play)


@dataclass
class GroupSnapshot:
    devices: dict[str, dict]
    active: str | None
    last_active: str | None
    player: dict
    revision: int
    fence: int
    recent: list                 # [[played_at_ms, track uri, context uri], ...] oldest first
    streams: dict[str, int]      # track uri -> streams
    counted_events: list         # event ids that counted (the window, oldest first)
    counted_plays: list          # play keys that counted (the window, oldest first)
    play_floor: int              # every playback id <= this counted
    plays: list = field(default_factory=list)   # the plays of the last 30 days (actors/devicegroup_plays.py)
    market: UserMarket = UserMarket()            # the player dict holds no `market` (see the module doc)

    def to_wire(self) -> dict:
        return {"v": SNAPSHOT_VERSION, "devices": {did: device_to_wire(d) for did, d in self.devices.items()},
                "active": self.active, "last_active": self.last_active,
                "player": {k: v for k, v in self.player.items() if k not in MIRRORED},
                "revision": self.revision, "fence": self.fence, "recent": list(self.recent),
                "streams": dict(self.streams), "counted_events": list(self.counted_events),
                "counted_plays": list(self.counted_plays), "play_floor": self.play_floor,
                "plays": list(self.plays), "market": self.market.to_wire()}

    @classmethod
    def from_wire(cls, data: dict) -> GroupSnapshot:
        v = data.get("v")
        if v not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"unknown device group snapshot version {v!r}")
        player = data["player"] if v == SNAPSHOT_VERSION else player_from_wire(data["p"])
        player, market = _split_market(player, data.get("market"))
        return cls(devices={did: device_from_wire(d) for did, d in data["devices"].items()},
                   active=data["active"], last_active=data["last_active"], player={**new_player(), **player},
                   market=market.over(UserMarket()) if market is not None else UserMarket(),
                   revision=data["revision"], fence=data["fence"], recent=list(data["recent"]),
                   streams=dict(data["streams"]), counted_events=list(data["counted_events"]),
                   counted_plays=list(data["counted_plays"]), play_floor=data["play_floor"],
                   plays=list(data.get("plays") or ()))
