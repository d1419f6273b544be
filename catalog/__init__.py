"""The music catalog: tracks, albums and artists with Spotify ids, lookups, search and Spotify objects.

    from catalog import Catalog
    cat = Catalog.generated(seed=0, tracks=10_000)   # the default, deterministic
    cat = Catalog.from_file("catalog.json")          # docs/catalog.md describes the format
"""
from catalog.core import Album, Artist, Catalog, Track, find_track, require

__all__ = ["Catalog", "Track", "Album", "Artist", "require", "find_track"]
