"""Markets in the catalog (docs/rights.md): the file field, the generated share, Spotify's shapes."""
from __future__ import annotations

import pytest

from catalog import Catalog
from catalog.generate import RESTRICTED_SHARE
from catalog.markets import MARKETS

A = "a" * 22
R = "r" * 22


def _file(**track_extra) -> dict:
    return {"artists": [{"id": R, "name": "R"}], "albums": [{"id": A, "name": "A", "artist_ids": [R],
                                                                "release_date": "2001"}],
            "tracks": [{"id": "t" * 22, "name": "T", "artist_ids": [R], "album_id": A, "duration_ms": 1000,
                        "track_number": 1, **track_extra}]}


def test_a_track_without_markets_plays_everywhere_and_lists_every_market():
    cat = Catalog.from_dict(_file())
    t = cat.track("t" * 22)
    assert t.markets is None and t.playable_in("SE") and t.playable_in("ZZ")
    assert cat.track_object(t)["available_markets"] == list(MARKETS)
    assert "available_markets" not in cat.to_dict()["tracks"][0]     # written back as it was read


def test_markets_round_trip_and_shape_with_a_market():
    cat = Catalog.from_dict(_file(available_markets=["SE", "NO"]))
    t = cat.track("t" * 22)
    assert t.markets == {"SE", "NO"}
    assert Catalog.from_dict(cat.to_dict()).track(t.id) == t
    assert cat.track_object(t)["available_markets"] == ["NO", "SE"]
    us = cat.track_object(t, market="US")
    assert us["is_playable"] is False and us["restrictions"] == {"reason": "market"}
    assert "available_markets" not in us and "available_markets" not in us["album"]
    se = cat.track_object(t, market="SE")
    assert se["is_playable"] is True and "restrictions" not in se
    album = cat.album_object(cat.album(A), market="US")
    assert album["is_playable"] is False and album["tracks"]["items"][0]["is_playable"] is False


@pytest.mark.parametrize("bad", [["se"], ["SWE"], "SE", [1], ["SE", "SE"]])
def test_a_bad_markets_field_is_refused_with_where_it_is(bad):
    with pytest.raises(ValueError, match=r"tracks\[0\].*available_markets"):
        Catalog.from_dict(_file(available_markets=bad))


def test_the_generated_catalog_restricts_a_documented_share_deterministically():
    a, b = Catalog.generated(seed=3, tracks=5000), Catalog.generated(seed=3, tracks=5000)
    restricted = [t.id for t in a.tracks if t.markets is not None]
    assert restricted == [t.id for t in b.tracks if t.markets is not None]
    albums = list(a.albums)
    share = sum(1 for al in albums if a.track(al.track_ids[0]).markets is not None) / len(albums)
    assert abs(share - RESTRICTED_SHARE) < 0.04, share
    # every track of a release shares its markets
    for al in albums:
        assert len({a.track(t).markets for t in al.track_ids}) == 1
    # some are unplayable in the default country, most are not
    us = sum(1 for t in a.tracks if not t.playable_in("US")) / len(a)
    assert 0.01 < us < 0.1, us


def test_markets_leave_the_rest_of_the_generated_catalog_as_it_was():
    # names and durations come from the first generator alone (pinned from before markets existed)
    cat = Catalog.generated(seed=0, tracks=100)
    first = cat.track(cat.track_ids[0])
    assert (first.name, first.duration_ms) == PINNED_FIRST


PINNED_FIRST = ("Heart of Palace", 198650)
