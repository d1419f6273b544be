"""The catalog file: one JSON object (optionally gzip-compressed), documented in docs/catalog.md.

    {"format": "syncopate-catalog", "version": 1,
     "artists": [{"id", "name", "genres"?, "popularity"?}],
     "albums":  [{"id", "name", "artist_ids", "release_date", "album_type"?, "popularity"?}],
     "tracks":  [{"id", "name", "artist_ids", "album_id", "duration_ms", "track_number",
                  "explicit"?, "popularity"?, "available_markets"?}]}

`available_markets` (a list of ISO 3166-1 alpha-2 codes) is where the track is licensed; a track
without it plays in every market, so files written before markets existed load unchanged
(catalog/markets.py, docs/rights.md). `[]` is a track taken down everywhere.

Validation is all-or-nothing and stops at the first bad entry with a ValueError that names the
file, the list and index, the field and the entry itself, so an operator can fix it without a
debugger. Unknown fields are refused rather than ignored: a typo (`duration` for `duration_ms`)
would otherwise load as a silently wrong catalog. An album's track order comes from its tracks'
`track_number`s (duplicates refused); an album or artist without `popularity` takes the highest
popularity of its tracks.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import orjson

from catalog.core import ALBUM_TYPES, Album, Artist, Catalog, Track
from catalog.markets import is_market
from protocols.uris import is_id

FORMAT = "syncopate-catalog"
VERSION = 1
MAX_DURATION_MS = 24 * 3600 * 1000
_DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")

_FIELDS = {
    "artists": ({"id", "name"}, {"genres", "popularity"}),
    "albums": ({"id", "name", "artist_ids", "release_date"}, {"album_type", "popularity"}),
    "tracks": ({"id", "name", "artist_ids", "album_id", "duration_ms", "track_number"},
               {"explicit", "popularity", "available_markets"}),
}


class _Entry:
    """Checks one entry and raises ValueError naming where it is and what it holds."""

    def __init__(self, source: str, section: str, index: int, entry):
        self.where = f"{source}: {section}[{index}]"
        self.entry = entry
        if not isinstance(entry, dict):
            self.fail("must be an object")
        required, optional = _FIELDS[section]
        missing = sorted(required - entry.keys())
        if missing:
            self.fail(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(entry.keys() - required - optional)
        if unknown:
            self.fail(f"unknown field(s) {', '.join(unknown)}")

    def fail(self, msg: str):
        text = orjson.dumps(self.entry).decode() if isinstance(self.entry, (dict, list)) else repr(self.entry)
        if len(text) > 300:
            text = text[:300] + "..."
        raise ValueError(f"{self.where}: {msg}: {text}")

    def id(self, field: str = "id") -> str:
        v = self.entry[field]
        if not is_id(v):
            self.fail(f"{field} must be a 22-character base62 id, got {v!r}")
        return v

    def name(self) -> str:
        v = self.entry["name"]
        if not isinstance(v, str) or not v.strip():
            self.fail("name must be a non-empty string")
        return v

    def int(self, field: str, lo: int, hi: int, default: int | None = None) -> int:
        v = self.entry.get(field, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(f"{field} must be an integer in {lo}..{hi}, got {v!r}")
        return v

    def ids(self, field: str, known: dict, what: str) -> tuple[str, ...]:
        v = self.entry[field]
        if not isinstance(v, list) or not v:
            self.fail(f"{field} must be a non-empty list of {what} ids")
        for x in v:
            if not is_id(x):
                self.fail(f"{field} holds a malformed id {x!r}")
            if x not in known:
                self.fail(f"{field} names an unknown {what} {x!r}")
        if len(set(v)) != len(v):
            self.fail(f"{field} repeats an id")
        return tuple(v)


def load_file(path) -> Catalog:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read catalog file {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return load_dict(data, str(path))


def load_dict(data, source: str = "catalog") -> Catalog:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the catalog must be a JSON object with artists, albums and tracks")
    if data.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{source}: format must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version", VERSION) != VERSION:
        raise ValueError(f"{source}: unsupported version {data.get('version')!r} (this server reads {VERSION})")
    unknown = sorted(data.keys() - {"format", "version", "artists", "albums", "tracks"})
    if unknown:
        raise ValueError(f"{source}: unknown top-level field(s) {', '.join(unknown)}")
    for section in ("artists", "albums", "tracks"):
        if not isinstance(data.get(section), list):
            raise ValueError(f"{source}: {section!r} must be a list")
    if not data["tracks"]:
        raise ValueError(f"{source}: the catalog holds no tracks")

    artists: dict[str, dict] = {}
    for i, raw in enumerate(data["artists"]):
        e = _Entry(source, "artists", i, raw)
        aid = e.id()
        if aid in artists:
            e.fail(f"duplicate artist id {aid}")
        genres = raw.get("genres", [])
        if not isinstance(genres, list) or not all(isinstance(g, str) and g for g in genres):
            e.fail("genres must be a list of non-empty strings")
        artists[aid] = {"name": e.name(), "genres": tuple(genres),
                        "popularity": e.int("popularity", 0, 100) if "popularity" in raw else None}

    albums: dict[str, dict] = {}
    for i, raw in enumerate(data["albums"]):
        e = _Entry(source, "albums", i, raw)
        aid = e.id()
        if aid in albums:
            e.fail(f"duplicate album id {aid}")
        date = raw["release_date"]
        if not isinstance(date, str) or not _DATE.match(date):
            e.fail(f"release_date must be YYYY, YYYY-MM or YYYY-MM-DD, got {date!r}")
        kind = raw.get("album_type", "album")
        if kind not in ALBUM_TYPES:
            e.fail(f"album_type must be one of {', '.join(ALBUM_TYPES)}, got {kind!r}")
        albums[aid] = {"name": e.name(), "artist_ids": e.ids("artist_ids", artists, "artist"),
                       "release_date": date, "album_type": kind, "tracks": {},
                       "popularity": e.int("popularity", 0, 100) if "popularity" in raw else None}

    tracks: list[Track] = []
    market_sets: dict[frozenset, frozenset] = {}   # one object per distinct set (releases share one)
    seen: set[str] = set()
    best: dict[str, int] = {}   # artist or album id -> highest track popularity
    for i, raw in enumerate(data["tracks"]):
        e = _Entry(source, "tracks", i, raw)
        tid = e.id()
        if tid in seen:
            e.fail(f"duplicate track id {tid}")
        seen.add(tid)
        album_id = e.id("album_id")
        if album_id not in albums:
            e.fail(f"album_id names an unknown album {album_id!r}")
        number = e.int("track_number", 1, 10_000)
        if number in albums[album_id]["tracks"]:
            e.fail(f"album {album_id} already has a track number {number}")
        explicit = raw.get("explicit", False)
        if not isinstance(explicit, bool):
            e.fail(f"explicit must be true or false, got {explicit!r}")
        popularity = e.int("popularity", 0, 100, default=0)
        markets = None
        if "available_markets" in raw:
            codes = raw["available_markets"]
            if not isinstance(codes, list) or not all(is_market(c) for c in codes):
                e.fail("available_markets must be a list of ISO 3166-1 alpha-2 codes (e.g. \"SE\")")
            if len(set(codes)) != len(codes):
                e.fail("available_markets repeats a market")
            fs = frozenset(codes)
            markets = market_sets.setdefault(fs, fs)
        track = Track(tid, "spotify:track:" + tid, e.name(), e.ids("artist_ids", artists, "artist"),
                      album_id, e.int("duration_ms", 1, MAX_DURATION_MS), number, explicit, popularity, markets)
        albums[album_id]["tracks"][number] = tid
        for key in (album_id, *track.artist_ids):
            best[key] = max(best.get(key, 0), popularity)
        tracks.append(track)

    def pop(key: str, given: int | None) -> int:
        return given if given is not None else best.get(key, 0)

    return Catalog(
        [Artist(aid, "spotify:artist:" + aid, a["name"], a["genres"], pop(aid, a["popularity"]))
         for aid, a in artists.items()],
        [Album(aid, "spotify:album:" + aid, a["name"], a["artist_ids"],
               tuple(a["tracks"][n] for n in sorted(a["tracks"])), a["release_date"], a["album_type"],
               pop(aid, a["popularity"]))
         for aid, a in albums.items()],
        tracks,
    )


def dump_dict(catalog: Catalog) -> dict:
    """The file form of a catalog; `load_dict(dump_dict(c))` rebuilds an equal catalog."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "artists": [{"id": a.id, "name": a.name, "genres": list(a.genres), "popularity": a.popularity}
                    for a in catalog.artists],
        "albums": [{"id": a.id, "name": a.name, "artist_ids": list(a.artist_ids),
                    "release_date": a.release_date, "album_type": a.album_type, "popularity": a.popularity}
                   for a in catalog.albums],
        "tracks": [_track_entry(t) for t in catalog.tracks],
    }


def _track_entry(t: Track) -> dict:
    out = {"id": t.id, "name": t.name, "artist_ids": list(t.artist_ids), "album_id": t.album_id,
           "duration_ms": t.duration_ms, "track_number": t.track_number, "explicit": t.explicit,
           "popularity": t.popularity}
    if t.markets is not None:
        out["available_markets"] = sorted(t.markets)
    return out
