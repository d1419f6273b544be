"""Catalog search: token and prefix match over names, with deterministic ranking.

Matching. A name is folded (Unicode NFKD without accents, casefolded, apostrophes dropped, so
"Don't" ~ "dont" and "Björn" ~ "bjorn") and split into words of letters and digits. Each word of
the query must be a prefix of some word of the item (a whole word is its own prefix), so
"elec hea" finds "Electric Heart". The words an item is found by:
- a track: its name and its artists' names;
- an album: its name and its album artists' names;
- an artist: its name.
Spotify's field filters are understood: `track:`, `album:`, `artist:` (value one word or a
"quoted phrase"; every word must prefix-match that field) and `year:1999` / `year:1990-1999`.
A filter on a field a type does not have (`album:` for artists, `track:` for albums and
artists, `year:` for artists) leaves that type with no results; a malformed year matches
nothing. Other `word:` prefixes are plain text.

Ranking, best first, ties broken by the next key:
1. the item's own name is exactly the query (same words, same order);
2. the sum over query words (free words, and the words of a filter on the item's own name,
   e.g. `track:` for tracks) of 3 (a whole word of the item's own name), 2 (a prefix of one) or
   1 (found only through an artist's name);
3. popularity, higher first;
4. the folded name's words, then the id (so the order is total and stable across processes).

The index is built on the first search (~0.1 s for 10k tracks) so that processes that never
search never pay for it: per type, a sorted vocabulary with postings lists (a prefix is a
`bisect` range of the vocabulary). Ranked results per (type, query) are kept in an LRU cache,
so paging through a result set ranks it once.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from bisect import bisect_left
from functools import lru_cache

from protocols.errors import ErrorCode, SyncopateError

TYPES = ("track", "album", "artist")
MAX_LIMIT = 50
MAX_OFFSET = 1000
_WORD = re.compile(r"[^\W_]+")
_FILTER = re.compile(r'\b(track|album|artist|year):(?:"([^"]*)"|(\S*))', re.IGNORECASE)
_YEARS = re.compile(r"^(\d{4})(?:-(\d{4}))?$")


def words(text: str) -> tuple[str, ...]:
    text = unicodedata.normalize("NFKD", text.casefold().replace("'", "").replace("\u2019", ""))
    if not text.isascii():
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return tuple(map(sys.intern, _WORD.findall(text)))


class _TypeIndex:
    def __init__(self, kind, items, names, extra_text, fields: dict[str, list[frozenset]], years, popularity):
        self.kind = kind                                      # the field naming the item itself
        self.items = items
        self.names = names                                    # own-name words per item
        self.fields = {kind: names, **fields}                 # field -> words per item
        self.years = years                                    # release year per item, or None
        self.popularity = popularity
        postings: dict[str, list[int]] = {}
        for i, (name, extra) in enumerate(zip(names, extra_text)):
            for w in set(name) | extra:
                postings.setdefault(w, []).append(i)
        self.postings = postings
        self.vocab = sorted(postings)

    def prefixed(self, prefix: str) -> set[int]:
        out: set[int] = set()
        vocab, i = self.vocab, bisect_left(self.vocab, prefix)
        while i < len(vocab) and vocab[i].startswith(prefix):
            out.update(self.postings[vocab[i]])
            i += 1
        return out

    def rank(self, free: tuple[str, ...], filters: tuple, years: tuple | None) -> tuple[int, ...]:
        if not free and not filters and years is None:
            return ()
        if free:
            cands: set[int] | range = self.prefixed(free[0])
            for w in free[1:]:
                if not cands:
                    return ()
                cands &= self.prefixed(w)
        else:
            cands = range(len(self.items))
        for field, fwords in filters:
            per_item = self.fields.get(field)
            if per_item is None:
                return ()
            cands = [i for i in cands if all(any(t.startswith(w) for t in per_item[i]) for w in fwords)]
        if years is not None:
            if self.years is None:
                return ()
            lo, hi = years
            cands = [i for i in cands if lo <= self.years[i] <= hi]

        # `track:heart` ranks tracks as `heart` would: a filter on the item's own name scores
        ranked_words = free + tuple(w for f, ws in filters if f == self.kind for w in ws if w not in free)

        def key(i: int):
            name, score = self.names[i], 0
            for w in ranked_words:
                if w in name:
                    score += 3
                elif any(t.startswith(w) for t in name):
                    score += 2
                else:
                    score += 1
            return (name != ranked_words, -score, -self.popularity[i], name, self.items[i].id)

        return tuple(sorted(cands, key=key))


class SearchIndex:
    def __init__(self, catalog):
        # word sets are shared between items wherever they can be (same credits, same album)
        artist_words = {a.id: words(a.name) for a in catalog.artists}
        credits: dict[tuple, frozenset] = {}

        def credit(artist_ids) -> frozenset:
            got = credits.get(artist_ids)
            if got is None:
                got = credits[artist_ids] = frozenset(w for aid in artist_ids for w in artist_words.get(aid, ()))
            return got

        tracks = list(catalog.tracks)
        albums = list(catalog.albums)
        artists = list(catalog.artists)
        album_words = {a.id: words(a.name) for a in albums}
        album_sets = {aid: frozenset(w) for aid, w in album_words.items()}
        album_year = {a.id: a.year for a in albums}

        t_names = [words(t.name) for t in tracks]
        t_credit = [credit(t.artist_ids) for t in tracks]
        al_names = [album_words[a.id] for a in albums]
        al_credit = [credit(a.artist_ids) for a in albums]
        ar_names = [artist_words[a.id] for a in artists]
        self._types = {
            "track": _TypeIndex("track", tracks, t_names, t_credit,
                                {"artist": t_credit, "album": [album_sets[t.album_id] for t in tracks]},
                                [album_year[t.album_id] for t in tracks], [t.popularity for t in tracks]),
            "album": _TypeIndex("album", albums, al_names, al_credit,
                                {"artist": al_credit},
                                [a.year for a in albums], [a.popularity for a in albums]),
            "artist": _TypeIndex("artist", artists, ar_names, [frozenset()] * len(artists),
                                 {},
                                 None, [a.popularity for a in artists]),
        }
        self._rank = lru_cache(maxsize=128)(self._rank_uncached)

    def _rank_uncached(self, kind, free, filters, years):
        return self._types[kind].rank(free, filters, years)

    def search(self, q, types, limit: int = 20, offset: int = 0) -> dict[str, tuple[list, int]]:
        kinds = parse_types(types)
        if not isinstance(q, str) or not q.strip():
            raise SyncopateError(ErrorCode.BAD_REQUEST, "missing q")
        for name, val, hi in (("limit", limit, MAX_LIMIT), ("offset", offset, MAX_OFFSET)):
            if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val <= hi:
                raise SyncopateError(ErrorCode.BAD_REQUEST, f"{name} must be between 0 and {hi}")
        free, filters, years = parse_query(q)
        out = {}
        for kind in kinds:
            ranked = self._rank(kind, free, filters, years)
            idx = self._types[kind]
            out[kind] = ([idx.items[i] for i in ranked[offset:offset + limit]], len(ranked))
        return out


def parse_types(types) -> tuple[str, ...]:
    if isinstance(types, str):
        types = types.split(",")
    kinds = tuple(dict.fromkeys(t.strip() for t in types if t and t.strip()))
    if not kinds:
        raise SyncopateError(ErrorCode.BAD_REQUEST, "missing type")
    bad = [t for t in kinds if t not in TYPES]
    if bad:
        raise SyncopateError(ErrorCode.BAD_REQUEST,
                             f"unsupported type {bad[0]!r}: use track, album, artist (comma-separated)")
    return kinds


def parse_query(q: str):
    """(free words, ((field, words), ...), (year_lo, year_hi) | None), normalised for the cache."""
    filters: list[tuple[str, tuple[str, ...]]] = []
    years = None
    for m in _FILTER.finditer(q):
        field, value = m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3)
        if field == "year":
            ym = _YEARS.match(value.strip())
            years = (int(ym.group(1)), int(ym.group(2) or ym.group(1))) if ym else (1, 0)
        else:
            fw = words(value)
            if fw:
                filters.append((field, tuple(dict.fromkeys(fw))))
    free = tuple(dict.fromkeys(words(_FILTER.sub(" ", q))))
    return free, tuple(sorted(set(filters))), years
