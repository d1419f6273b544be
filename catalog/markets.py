"""Markets: where a track may be played (ISO 3166-1 alpha-2 country codes), docs/rights.md.

A track carries `markets`: None means every market (what a catalog file without the field means,
so files written before markets existed load unchanged: every track playable everywhere), or a
frozenset of the codes it is licensed in (an empty set: taken down everywhere, still known).

`MARKETS` is the list Spotify's `available_markets` carries for an unrestricted track (the markets
Spotify served in 2025). An unrestricted track (None) plays in any market, listed or not.

The generated catalog restricts a documented share of releases (catalog/generate.py) by REGIONS:
licensing is by release, so every track of an album shares its album's markets (and one frozenset
object: a restricted catalog costs almost no memory).
"""
from __future__ import annotations

import re

MARKET_RE = re.compile(r"^[A-Z]{2}$")

MARKETS: tuple[str, ...] = tuple("""
AD AE AG AL AM AO AR AT AU AZ BA BB BD BE BF BG BH BI BJ BN BO BR BS BT BW BY BZ CA CD CG CH CI CL CM CO
CR CV CW CY CZ DE DJ DK DM DO DZ EC EE EG ES ET FI FJ FM FR GA GB GD GE GH GM GN GQ GR GT GW GY HK HN HR
HT HU ID IE IL IN IQ IS IT JM JO JP KE KG KH KI KM KN KR KW KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD
ME MG MH MK ML MN MO MR MT MU MV MW MX MY MZ NA NE NG NI NL NO NP NR NZ OM PA PE PG PH PK PL PR PS PT PW
PY QA RO RS RW SA SB SC SE SG SI SK SL SM SN SR ST SV SZ TD TG TH TJ TL TN TO TR TT TV TW TZ UA UG US UY
UZ VC VE VN VU WS XK ZA ZM ZW""".split())
ALL_MARKETS = frozenset(MARKETS)

# licensing regions the generator draws restrictions from
REGIONS: dict[str, tuple[str, ...]] = {
    "north-america": ("US", "CA", "MX"),
    "nordics": ("SE", "NO", "DK", "FI", "IS"),
    "dach": ("DE", "AT", "CH", "LI"),
    "uk-ireland": ("GB", "IE"),
    "japan": ("JP",),
    "latam": ("AR", "BR", "CL", "CO", "PE", "UY", "EC", "BO", "PY", "VE"),
    "oceania": ("AU", "NZ"),
    "southern-europe": ("ES", "PT", "IT", "GR", "MT", "CY"),
}


def is_market(code) -> bool:
    return isinstance(code, str) and MARKET_RE.match(code) is not None


def playable_in(markets: frozenset | None, market: str | None) -> bool:
    """Whether a track with these `markets` may be played in `market` (None: no market asked, the
    question does not arise: playable)."""
    if market is None or markets is None:
        return True
    return market in markets


def available_list(markets: frozenset | None) -> list[str]:
    """Spotify's `available_markets` for a track: sorted codes."""
    if markets is None:
        return list(MARKETS)
    return sorted(markets)
