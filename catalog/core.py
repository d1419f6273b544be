"""The catalog's data model and lookups: tracks, albums and artists, and their Spotify objects.

Design choices:
- Entities are frozen `__slots__` dataclasses: every server process (and every Ray host that
  wants one) builds its own catalog at start, so it must be small (about 0.5 KB a track) and
  safe to share between coroutines without copying.
- `Catalog` owns only dicts id -> entity plus two derived indexes (artist -> albums, and the
  search index, built lazily on the first search). It never mutates an entity after construction.
- The Spotify objects (`track_object`, `album_object`, ...) are rendered on demand rather than
  stored: a rendered track is ~1.5 KB of dicts, three times the entity, and most tracks are never
  asked for. Rendering one costs a few microseconds. `base_url` makes `href`s point at this
  server; it defaults to Spotify's, which is what a client that only reads ids and uris expects.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterable

from catalog.markets import available_list, playable_in
from protocols.errors import ErrorCode, SyncopateError
from protocols.uris import parse_uri

SPOTIFY_API = "https://api.spotify.com/v1"
OPEN_URL = "https://open.spotify.com"
ALBUM_TYPES = ("album", "single", "compilation")
ALBUM_TRACKS_IN_FULL_ALBUM = 50  # Spotify embeds the first 50 tracks in a full album object


@dataclass(frozen=True, slots=True)
class Artist:
    id: str
    uri: str
    name: str
    genres: tuple[str, ...] = ()
    popularity: int = 0


@dataclass(frozen=True, slots=True)
class Album:
    id: str
    uri: str
    name: str
    artist_ids: tuple[str, ...]
    track_ids: tuple[str, ...]
    release_date: str              # "YYYY", "YYYY-MM" or "YYYY-MM-DD"
    album_type: str = "album"      # album | single | compilation (Spotify reports EPs as singles)
    popularity: int = 0

    @property
    def release_date_precision(self) -> str:
        return ("year", "month", "day")[self.release_date.count("-")]

    @property
    def year(self) -> int:
        return int(self.release_date[:4])


@dataclass(frozen=True, slots=True)
class Track:
    id: str
    uri: str
    name: str
    artist_ids: tuple[str, ...]
    album_id: str
    duration_ms: int
    track_number: int
    explicit: bool = False
    popularity: int = 0
    markets: frozenset | None = None   # None: every market (catalog/markets.py); else where it is licensed

    def playable_in(self, market: str | None) -> bool:
        return playable_in(self.markets, market)

    def restriction(self, market: str | None, explicit_filter: bool = False) -> str | None:
        """Why it may not play for this listener (Spotify's `restrictions.reason`): "market" (not
        licensed in `market`), "explicit" (explicit, and the account's explicit content filter is
        on), or None: it may."""
        if not self.playable_in(market):
            return "market"
        if explicit_filter and self.explicit:
            return "explicit"
        return None


class Catalog:
    """An immutable set of artists, albums and tracks with id lookups and Spotify rendering.

    Build with `Catalog.generated(seed, tracks)` or `Catalog.from_file(path)`; the constructor
    trusts its input (the loader validates files, the generator is correct by construction).
    """

    def __init__(self, artists: Iterable[Artist], albums: Iterable[Album], tracks: Iterable[Track]):
        self._artists: dict[str, Artist] = {a.id: a for a in artists}
        self._albums: dict[str, Album] = {a.id: a for a in albums}
        self._tracks: dict[str, Track] = {t.id: t for t in tracks}
        # uri -> track, for the uris track_by_uri found (only uris naming one of these tracks): a device
        # group looks up its current and next tracks on every push, 2.5 uri parses per W2 command
        self._track_uris: dict[str, Track] = {}
        self.track_ids: list[str] = list(self._tracks)
        by_artist: dict[str, list[Album]] = {}
        for album in self._albums.values():
            for aid in album.artist_ids:
                by_artist.setdefault(aid, []).append(album)
        # newest first, as Spotify lists an artist's discography
        self._artist_albums = {aid: tuple(sorted(albs, key=lambda a: (a.release_date, a.id), reverse=True))
                               for aid, albs in by_artist.items()}
        self._appears_on: dict[str, tuple[Album, ...]] | None = None
        self._popular: tuple[Track, ...] | None = None
        self._search = None
        self._lock = threading.Lock()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def generated(cls, seed: int = 0, tracks: int = 10_000) -> "Catalog":
        from catalog.generate import generate
        return generate(seed=seed, tracks=tracks)

    @classmethod
    def from_file(cls, path) -> "Catalog":
        from catalog.fileformat import load_file
        return load_file(path)

    @classmethod
    def from_dict(cls, data: dict, source: str = "catalog") -> "Catalog":
        from catalog.fileformat import load_dict
        return load_dict(data, source)

    def to_dict(self) -> dict:
        from catalog.fileformat import dump_dict
        return dump_dict(self)

    def __getstate__(self):  # pickles without the lazy indexes or the lock
        return (list(self._artists.values()), list(self._albums.values()), list(self._tracks.values()))

    def __setstate__(self, state):
        self.__init__(*state)

    def replace_with(self, other: "Catalog") -> None:
        """A catalog reload (docs/rights.md "Takedowns"): this object takes `other`'s content in place,
        so every holder of it (the entities' Env, the gateway's presenters) sees the new catalog at
        once. Runs on the event loop between two turns: no coroutine sees half of each."""
        self.__init__(list(other._artists.values()), list(other._albums.values()), list(other._tracks.values()))

    # -- lookups ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._tracks)

    def __repr__(self) -> str:
        return (f"<Catalog {len(self._tracks)} tracks, {len(self._albums)} albums, "
                f"{len(self._artists)} artists>")

    @property
    def tracks(self):
        return self._tracks.values()

    @property
    def albums(self):
        return self._albums.values()

    @property
    def artists(self):
        return self._artists.values()

    def track(self, id: str) -> Track | None:
        return self._tracks.get(id)

    def album(self, id: str) -> Album | None:
        return self._albums.get(id)

    def artist(self, id: str) -> Artist | None:
        return self._artists.get(id)

    def track_by_uri(self, uri: str) -> Track | None:
        """None when well-formed but unknown; INVALID_URI when malformed or not a track uri."""
        hit = self._track_uris.get(uri) if isinstance(uri, str) else None     # (a list is unhashable)
        if hit is None:
            hit = self._tracks.get(parse_uri(uri, "track")[1])
            if hit is not None:
                self._track_uris[uri] = hit
        return hit

    def album_by_uri(self, uri: str) -> Album | None:
        return self._albums.get(parse_uri(uri, "album")[1])

    def artist_by_uri(self, uri: str) -> Artist | None:
        return self._artists.get(parse_uri(uri, "artist")[1])

    def album_tracks(self, album_id: str) -> list[Track]:
        album = self._albums.get(album_id)
        return [self._tracks[t] for t in album.track_ids] if album else []

    def artist_albums(self, artist_id: str) -> list[Album]:
        """Albums the artist is an album artist of, newest first."""
        return list(self._artist_albums.get(artist_id, ()))

    def artist_appears_on(self, artist_id: str) -> list[Album]:
        """Albums of other artists where the artist is credited on a track, newest first."""
        if self._appears_on is None:
            found: dict[str, dict[str, Album]] = {}
            for t in self._tracks.values():
                album = self._albums[t.album_id]
                for aid in t.artist_ids:
                    if aid not in album.artist_ids:
                        found.setdefault(aid, {})[album.id] = album
            self._appears_on = {aid: tuple(sorted(d.values(), key=lambda a: (a.release_date, a.id), reverse=True))
                                for aid, d in found.items()}
        return list(self._appears_on.get(artist_id, ()))

    def artist_top_tracks(self, artist_id: str, limit: int = 10) -> list[Track]:
        """The artist's most popular tracks (own albums and features), ties by id."""
        albums = self.artist_albums(artist_id) + self.artist_appears_on(artist_id)
        tracks = {t.id: t for al in albums for t in self.album_tracks(al.id) if artist_id in t.artist_ids}
        return sorted(tracks.values(), key=lambda t: (-t.popularity, t.id))[:limit]

    def popular(self, limit: int = 100) -> list[Track]:
        """The catalog's most popular tracks, ties by id (autoplay's last resort)."""
        if self._popular is None:
            self._popular = tuple(sorted(self._tracks.values(), key=lambda t: (-t.popularity, t.id))[:1000])
        return list(self._popular[:limit])

    # -- search ---------------------------------------------------------------------------------
    def search(self, q: str, types, limit: int = 20, offset: int = 0) -> dict[str, tuple[list, int]]:
        """{type: (items, total)} for each requested type; see catalog/search.py for semantics."""
        if self._search is None:
            with self._lock:
                if self._search is None:
                    from catalog.search import SearchIndex
                    self._search = SearchIndex(self)
        return self._search.search(q, types, limit, offset)

    # -- Spotify objects --------------------------------------------------------------------------
    def artist_object(self, artist: Artist, base_url: str = SPOTIFY_API, full: bool = True) -> dict:
        obj = {
            "external_urls": {"spotify": f"{OPEN_URL}/artist/{artist.id}"},
            "href": f"{base_url}/artists/{artist.id}",
            "id": artist.id,
            "name": artist.name,
            "type": "artist",
            "uri": artist.uri,
        }
        if full:
            obj["followers"] = {"href": None, "total": _followers(artist)}
            obj["genres"] = list(artist.genres)
            obj["images"] = []
            obj["popularity"] = artist.popularity
        return obj

    def _artists_of(self, artist_ids, base_url: str) -> list[dict]:
        out = []
        for aid in artist_ids:
            artist = self._artists.get(aid)
            if artist is not None:
                out.append(self.artist_object(artist, base_url, full=False))
        return out

    def simplified_track_object(self, track: Track, base_url: str = SPOTIFY_API, market: str | None = None,
                                explicit_filter: bool = False) -> dict:
        obj = {
            "artists": self._artists_of(track.artist_ids, base_url),
            "available_markets": available_list(track.markets),
            "disc_number": 1,
            "duration_ms": track.duration_ms,
            "explicit": track.explicit,
            "external_urls": {"spotify": f"{OPEN_URL}/track/{track.id}"},
            "href": f"{base_url}/tracks/{track.id}",
            "id": track.id,
            "is_local": False,
            "name": track.name,
            "preview_url": None,
            "track_number": track.track_number,
            "type": "track",
            "uri": track.uri,
        }
        if market is not None:
            # Spotify: with a market, `is_playable` (+ `restrictions` when not) instead of the list
            del obj["available_markets"]
            why = track.restriction(market, explicit_filter)
            obj["is_playable"] = why is None
            if why is not None:
                obj["restrictions"] = {"reason": why}
        return obj

    def track_object(self, track: Track, base_url: str = SPOTIFY_API, market: str | None = None,
                     explicit_filter: bool = False) -> dict:
        obj = self.simplified_track_object(track, base_url, market, explicit_filter)
        obj["album"] = self.album_object(self._albums[track.album_id], full=False, base_url=base_url, market=market,
                                         explicit_filter=explicit_filter)
        obj["external_ids"] = {}
        obj["popularity"] = track.popularity
        return obj

    def album_markets(self, album: Album) -> frozenset | None:
        """Where any track of the album plays (None: one of its tracks is unrestricted)."""
        out: set = set()
        for tid in album.track_ids:
            m = self._tracks[tid].markets
            if m is None:
                return None
            out |= m
        return frozenset(out)

    def album_object(self, album: Album, full: bool = True, base_url: str = SPOTIFY_API,
                     market: str | None = None, explicit_filter: bool = False) -> dict:
        obj = {
            "album_type": album.album_type,
            "artists": self._artists_of(album.artist_ids, base_url),
            "available_markets": available_list(self.album_markets(album)),
            "external_urls": {"spotify": f"{OPEN_URL}/album/{album.id}"},
            "href": f"{base_url}/albums/{album.id}",
            "id": album.id,
            "images": [],
            "name": album.name,
            "release_date": album.release_date,
            "release_date_precision": album.release_date_precision,
            "total_tracks": len(album.track_ids),
            "type": "album",
            "uri": album.uri,
        }
        if full:
            n, limit = len(album.track_ids), ALBUM_TRACKS_IN_FULL_ALBUM
            page = f"{base_url}/albums/{album.id}/tracks"
            obj.update({
                "copyrights": [],
                "external_ids": {},
                "genres": [],
                "label": self._artists[album.artist_ids[0]].name if album.artist_ids else "Independent",
                "popularity": album.popularity,
                "tracks": {
                    "href": f"{page}?offset=0&limit={limit}",
                    "items": [self.simplified_track_object(self._tracks[t], base_url, market, explicit_filter)
                              for t in album.track_ids[:limit]],
                    "limit": limit,
                    "next": f"{page}?offset={limit}&limit={limit}" if n > limit else None,
                    "offset": 0,
                    "previous": None,
                    "total": n,
                },
            })
        if market is not None:
            del obj["available_markets"]
            if explicit_filter:          # playable: any of its tracks may play for this listener
                obj["is_playable"] = any(self._tracks[t].restriction(market, True) is None for t in album.track_ids)
            else:
                obj["is_playable"] = playable_in(self.album_markets(album), market)
        return obj


def _followers(artist: Artist) -> int:
    """A plausible follower count that grows steeply with popularity (deterministic)."""
    return int(10 ** (2 + artist.popularity / 20)) + int(artist.id[:4], 36) % 997


def require(catalog: Catalog | None, uri: Any, kind: str = "track") -> Track | Album | Artist | None:
    """The one "does it exist" check of every entity: not a string, malformed or not a `kind` uri ->
    INVALID_URI; well-formed but not in the catalog -> UNKNOWN_URI. Without a catalog (pure tests of
    an entity's logic) only the shape is checked, and the answer is None."""
    if not isinstance(uri, str):
        raise SyncopateError(ErrorCode.INVALID_URI, f"{uri!r} is not a Spotify {kind} uri")
    parse_uri(uri, kind)
    if catalog is None:
        return None
    found = getattr(catalog, f"{kind}_by_uri")(uri)       # track_by_uri, album_by_uri, artist_by_uri
    if found is None:
        raise SyncopateError(ErrorCode.UNKNOWN_URI, f"unknown {kind}: {uri}", uri=uri)
    return found


def find_track(catalog: Catalog | None, uri: Any) -> Track | None:
    """The track a stored uri names, or None (no catalog, not a string, malformed, or gone from the
    catalog): for reading state back, where `require` would refuse a command."""
    if catalog is None or not isinstance(uri, str):
        return None
    try:
        return catalog.track_by_uri(uri)
    except SyncopateError:
        return None
