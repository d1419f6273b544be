"""The default catalog: deterministic, generated from word lists in well under 0.3 s.

Every server process builds it at start, and every process must build the *same* catalog, so:
- all randomness comes from one `random.Random(seed)` (Mersenne Twister: stable across processes
  and Python versions, and independent of PYTHONHASHSEED); nothing iterates a set of strings,
  whose order would differ between processes;
- ids are `blake2b(f"syncopate:{seed}:{kind}:{index}")` mapped byte by byte onto base62: stable,
  22 characters, and distinct between kinds and seeds. (The byte-to-digit map is slightly biased;
  ids need to be unique and stable, not uniform.)

Shape for the default 10,000 tracks: ~1,000 albums (ALBUM_MIX: 60% albums of 9-16 tracks, 28%
singles of 1-6 tracks, which is how Spotify reports EPs too, 12% compilations of 8-16 tracks),
~300 artists (3% of the track count), every artist with at least one album, ~12% of tracks
with a featured artist, 12% explicit, durations 90-420 s (triangular, mode 200 s), popularity
skewed low per artist with per-track noise.

Markets (docs/rights.md): RESTRICTED_SHARE (10%) of the albums are region-restricted, every track of
such an album sharing its markets: half of them available only in one licensing region
(catalog/markets.REGIONS), half everywhere except one region. Drawn from a second generator,
`random.Random(f"syncopate-markets:{seed}")`, so everything else is exactly what it was before
markets existed (same names, durations, popularity).
"""
from __future__ import annotations

import random
from hashlib import blake2b

from protocols.uris import BASE62
from catalog.core import Album, Artist, Catalog, Track
from catalog.markets import ALL_MARKETS, REGIONS

_ID_TABLE = bytes(ord(BASE62[i % 62]) for i in range(256))

ADJECTIVES = """Electric Silver Golden Midnight Broken Hollow Neon Velvet Crimson Quiet Wild Burning
Frozen Lonely Distant Secret Restless Paper Glass Endless Sweet Bitter Northern Southern Crystal
Faded Hidden Sacred Savage Gentle Lucky Stolen Fragile Violet Amber Scarlet Blue Green Black White
Cosmic Lunar Solar Atomic Analog Digital Honest Dirty Lost Young Old Golden Rusty Silent Loud Brave
Tender Wicked Heavy Empty Perfect Strange Dreamy Hazy Rainy Sunny Cold Warm Bright Dark Little Big
Electric Magnetic Infinite Royal Radiant Phantom Urban Rural Coastal Desert Tropical Arctic""".split()
NOUNS = """Heart River Ocean Mountain Highway Signal Mirror Garden Window Shadow Echo Fire Storm
Thunder Rain Summer Winter Autumn Spring Morning Evening Night Dream Memory Ghost Angel Devil Road
Train Station Harbor Island Valley Forest Desert Canyon Horizon Satellite Rocket Planet Comet Star
Moon Sun Cloud Wave Tide Feather Stone Diamond Rose Lily Orchid Tiger Falcon Raven Wolf Fox Horse
Lion Dragon Machine Engine Radio Record Guitar Piano Drum Siren Voice Whisper Promise Secret Letter
Story Chapter Kingdom Empire City Street Avenue Alley Bridge Tower Castle Palace Cathedral Temple
Lantern Candle Flame Spark Ember Ash Dust Smoke Mist Frost Snow Ice Glacier Volcano Meadow Orchard
Vineyard Lighthouse Compass Anchor Sail Voyage Journey Runaway Stranger Lover Dancer Dreamer
Drifter Wanderer Outlaw Rebel Hero Saint Sinner Prophet Monsoon Parade Carnival Circus Fever
Paradise Gravity Horizon Rhythm Melody Harmony Chorus Anthem Ballad Lullaby Serenade""".split()
VERBS = """Dancing Running Falling Flying Dreaming Burning Waiting Drifting Chasing Singing Fading
Shining Breaking Holding Crying Laughing Driving Walking Swimming Floating Calling Hiding Rising
Sleeping Spinning Turning Wishing Praying Waking Wandering""".split()
PLACES = """Tokyo Berlin Lisbon Paris Havana Memphis Nashville Detroit Chicago Brooklyn Harlem
Manchester Glasgow Dublin Reykjavik Oslo Stockholm Marseille Naples Athens Istanbul Cairo Lagos
Nairobi Bombay Seoul Kyoto Sydney Auckland Santiago Lima Bogota Montreal Vancouver Austin Memphis
Brighton Bristol Kingston Rio""".split()
FIRST = """Ava Liam Mara Noah Elena Jonas Sofia Mateo Ines Oscar Lena Felix Nora Hugo Zara Milo
Clara Theo Iris Leon Maya Ezra Luna Silas Ruby Axel Vera Otis Nina Jasper Alma Caleb Freya Rafael
Greta Tobias Isla Marco Leila Anton Selma Dario Yara Kai Olive Bruno Ada Cyrus June Emil Hazel
Nico Rosa Soren Talia Viktor Wren Ximena Yusuf Zoe Amara Björn Chloé José Zoë""".split()
LAST = """Lindqvist Moreau Okafor Castillo Nakamura Petrov Fischer Rossi Kowalski Haddad Silva
Johansson Mendes Novak Brennan Delacroix Vance Ashford Calloway Whitfield Hartley Sinclair Monroe
Okoye Varga Lindgren Sato Kim Park Reyes Navarro Quinn Harper Mercer Rhodes Sterling Blackwood
Winter Frost Rivers Stone Fox Wilde Lovelace Marlowe Beaumont Duval Fontaine Alvarez Herrera
Ibarra Jansen Kaur Singh Abara Tanaka Müller Núñez""".split()
GENRES = """pop rock indie-rock indie-pop alt-rock hip-hop rap r&b soul funk jazz blues folk
country electronic house techno ambient drum-and-bass dubstep synthpop new-wave punk post-punk
metal hard-rock classical reggae latin afrobeat k-pop j-pop disco lo-fi shoegaze dream-pop
singer-songwriter gospel bossa-nova""".split()
ADJECTIVES, NOUNS, PLACES = (list(dict.fromkeys(w)) for w in (ADJECTIVES, NOUNS, PLACES))
SUFFIXES = (" - Live", " - Acoustic", " - Remastered", " (Remix)", " - Radio Edit", " (Interlude)")
COMPILATIONS = ("Greatest Hits", "The Best of {a}", "Anthology", "Essentials", "The Collection",
                "Singles", "Rarities")

# (album_type, share, min tracks, max tracks): mean ~9.9 tracks an album
ALBUM_MIX = (("album", 0.60, 9, 16), ("single", 0.28, 1, 6), ("compilation", 0.12, 8, 16))
RESTRICTED_SHARE = 0.10     # albums (and so ~tracks) that are region-restricted


def _market_sets(seed: int) -> tuple[random.Random, list[frozenset]]:
    """The restriction generator and the sets it picks from: each region alone, and everything but it."""
    sets = []
    for name in sorted(REGIONS):
        region = frozenset(REGIONS[name])
        sets.append(region)
        sets.append(ALL_MARKETS - region)
    return random.Random(f"syncopate-markets:{seed}"), sets


def make_id(seed: int, kind: str, index: int) -> str:
    return blake2b(f"syncopate:{seed}:{kind}:{index}".encode(), digest_size=22).digest() \
        .translate(_ID_TABLE).decode("ascii")


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _title(rng: random.Random) -> str:
    r = rng.random()
    c = rng.choice
    if r < 0.30:
        name = f"{c(ADJECTIVES)} {c(NOUNS)}"
    elif r < 0.45:
        name = f"{c(NOUNS)} of {c(['the ', ''])}{c(NOUNS)}"
    elif r < 0.60:
        name = f"{c(VERBS)} {c(['in', 'on', 'through', 'under', 'with', 'into'])} the {c(NOUNS)}"
    elif r < 0.72:
        name = c(NOUNS)
    elif r < 0.80:
        name = f"The {c(ADJECTIVES)} {c(NOUNS)}"
    elif r < 0.86:
        name = f"{c(PLACES)} {c(NOUNS)}"
    elif r < 0.92:
        name = f"{c(VERBS)} {_plural(c(NOUNS))}"
    else:
        name = f"{c(['Tell', 'Take', 'Show', 'Hold', 'Call', 'Wake'])} Me {c(['Home', 'Back', 'Again', 'Tonight', 'Softly', 'Now'])}"
    if rng.random() < 0.06:
        name += c(SUFFIXES)
    return name


def _album_title(rng: random.Random) -> str:
    r = rng.random()
    c = rng.choice
    if r < 0.35:
        return _title(rng).split(" - ")[0].split(" (")[0]
    if r < 0.55:
        return f"{c(ADJECTIVES)} {_plural(c(NOUNS))}"
    if r < 0.70:
        return c(PLACES)
    if r < 0.85:
        return f"Songs for {c(['the ', ''])}{c(NOUNS)}"
    return _plural(c(NOUNS))


def _artist_name(rng: random.Random) -> str:
    r = rng.random()
    c = rng.choice
    if r < 0.38:
        return f"{c(FIRST)} {c(LAST)}"
    if r < 0.62:
        return f"The {c(ADJECTIVES)} {_plural(c(NOUNS))}"
    if r < 0.76:
        return f"{c(ADJECTIVES)} {c(NOUNS)}"
    if r < 0.86:
        return f"{c(FIRST)} & the {_plural(c(NOUNS))}"
    if r < 0.92:
        return f"{c(['DJ', 'MC', 'Lil', 'Young', 'Big'])} {c(NOUNS)}"
    return c(NOUNS) + c(["", "a", "o", "ix", "ar"])


def _clamp(v: float, lo: int = 0, hi: int = 100) -> int:
    return max(lo, min(hi, int(v)))


def generate(seed: int = 0, tracks: int = 10_000) -> Catalog:
    if not isinstance(tracks, int) or tracks < 1:
        raise ValueError(f"tracks must be a positive integer, got {tracks!r}")
    rng = random.Random(seed)

    # album shapes first: the album count follows from the track count
    shapes: list[tuple[str, int]] = []
    total = 0
    while total < tracks:
        r, acc = rng.random(), 0.0
        for kind, share, lo, hi in ALBUM_MIX:
            acc += share
            if r < acc:
                break
        n = min(rng.randint(lo, hi), tracks - total)
        shapes.append((kind, n))
        total += n
    n_albums = len(shapes)
    n_artists = max(1, min(n_albums, round(tracks * 0.03)))

    artists: list[Artist] = []
    for i in range(n_artists):
        aid = make_id(seed, "artist", i)
        genres = tuple(sorted(rng.sample(GENRES, rng.randint(1, 3))))
        popularity = _clamp(100 * rng.random() ** 1.6)
        artists.append(Artist(aid, "spotify:artist:" + aid, _artist_name(rng), genres, popularity))

    albums: list[Album] = []
    out_tracks: list[Track] = []
    t_index = 0
    mrng, market_sets = _market_sets(seed)
    for i, (kind, n) in enumerate(shapes):
        markets = mrng.choice(market_sets) if mrng.random() < RESTRICTED_SHARE else None
        # every artist gets at least one album; the rest go to random artists
        main = artists[i] if i < n_artists else artists[rng.randrange(n_artists)]
        album_artists = (main.id,)
        if kind == "album" and n_artists > 1 and rng.random() < 0.06:
            other = artists[rng.randrange(n_artists)]
            if other is not main:
                album_artists = (main.id, other.id)
        album_id = make_id(seed, "album", i)
        base_pop = main.popularity
        track_ids = []
        names = []
        for k in range(n):
            tid = make_id(seed, "track", t_index)
            t_index += 1
            credit = album_artists
            if n_artists > 2 and rng.random() < 0.12:
                feat = artists[rng.randrange(n_artists)].id
                if feat not in credit:
                    credit = credit + (feat,)
            name = _title(rng)
            names.append(name)
            duration = int(rng.triangular(90_000, 420_000, 200_000))
            popularity = _clamp(base_pop - 10 + 25 * rng.random() - 3 * k)
            out_tracks.append(Track(tid, "spotify:track:" + tid, name, credit, album_id, duration,
                                    k + 1, rng.random() < 0.12, popularity, markets))
            track_ids.append(tid)
        if kind == "single":
            album_name = names[0].split(" - ")[0]
        elif kind == "compilation":
            album_name = rng.choice(COMPILATIONS).format(a=main.name)
        else:
            album_name = _album_title(rng)
        date = f"{rng.randint(1965, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        albums.append(Album(album_id, "spotify:album:" + album_id, album_name, album_artists,
                            tuple(track_ids), date, kind, _clamp(base_pop + 5 * rng.random())))
    return Catalog(artists, albums, out_tracks)
