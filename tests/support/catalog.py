"""One way to build the catalog a test needs: a real catalog.Catalog (the class the server runs),
from a few lines of description, instead of per-module fakes that only resembled it.

    b = CatalogBuilder()
    r = b.artist("r" + "0" * 21, "Artist 0")
    a = b.album("a" + "0" * 21, [r], "Album 0")
    b.track("t" + "0" * 21, a, name="Song 0", duration_ms=100_000)
    cat = b.build()

`catalog_with(track_ids, album_ids, artist_ids)` is the short form for tests that only need some ids
to exist (every track on one filler album by one filler artist).
"""
from __future__ import annotations

from typing import Iterable

from catalog.core import Album, Artist, Catalog, Track

FILLER_ARTIST = "f" * 22
FILLER_ALBUM = "g" * 22


def tid(i: int) -> str:
    """The i-th test track id (22 characters, as Spotify ids are)."""
    return f"t{i:021d}"


def turi(i: int) -> str:
    return f"spotify:track:{tid(i)}"


class CatalogBuilder:
    def __init__(self) -> None:
        self._artists: dict[str, Artist] = {}
        self._albums: dict[str, dict] = {}
        self._tracks: list[dict] = []

    def artist(self, ident: str, name: str | None = None) -> str:
        self._artists[ident] = Artist(ident, f"spotify:artist:{ident}", name or f"Artist {ident}")
        return ident

    def album(self, ident: str, artist_ids: Iterable[str], name: str | None = None,
              release_date: str = "2020-01-01", album_type: str = "album") -> str:
        self._albums[ident] = {"id": ident, "name": name or f"Album {ident}", "artists": tuple(artist_ids),
                               "tracks": [], "release_date": release_date, "album_type": album_type}
        return ident

    def track(self, ident: str, album_id: str, artist_ids: Iterable[str] | None = None, *,
              name: str | None = None, duration_ms: int = 200_000, markets: Iterable[str] | None = None,
              popularity: int = 0, explicit: bool = False) -> str:
        """`markets`: where the track is licensed (None: every market, catalog/markets.py)."""
        alb = self._albums[album_id]
        alb["tracks"].append(ident)
        self._tracks.append({"id": ident, "name": name or f"Track {ident}", "album": album_id,
                             "artists": tuple(artist_ids) if artist_ids is not None else alb["artists"],
                             "duration_ms": duration_ms, "number": len(alb["tracks"]),
                             "markets": frozenset(markets) if markets is not None else None,
                             "popularity": popularity, "explicit": explicit})
        return ident

    def build(self) -> Catalog:
        artists = list(self._artists.values())
        albums = [Album(a["id"], f"spotify:album:{a['id']}", a["name"], a["artists"], tuple(a["tracks"]),
                        a["release_date"], a["album_type"]) for a in self._albums.values()]
        tracks = [Track(t["id"], f"spotify:track:{t['id']}", t["name"], t["artists"], t["album"],
                        t["duration_ms"], t["number"], explicit=t["explicit"], popularity=t["popularity"],
                        markets=t["markets"])
                  for t in self._tracks]
        return Catalog(artists, albums, tracks)


def catalog_with(track_ids: Iterable[str] = (), album_ids: Iterable[str] = (),
                 artist_ids: Iterable[str] = ()) -> Catalog:
    """A catalog in which exactly these ids exist (plus one filler artist and album)."""
    b = CatalogBuilder()
    b.artist(FILLER_ARTIST)
    for ident in artist_ids:
        b.artist(ident)
    b.album(FILLER_ALBUM, [FILLER_ARTIST])
    for ident in album_ids:
        b.album(ident, [FILLER_ARTIST])
    for ident in track_ids:
        b.track(ident, FILLER_ALBUM)
    return b.build()
