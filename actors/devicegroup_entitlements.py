"""The device group's entitlements and autoplay (docs/rights.md): what may play for this user now (the
catalog and the group's account facts, its market and explicit filter, actors/devicegroup_market.py),
the refusal when it may not, the takedown notice of a catalog reload (and the move off a track a
change of those facts withdraws), and autoplay's related tracks. A mixin of DeviceGroupEntity (actors/devicegroup.py);
the state machine takes the check as a predicate (actors/player_state.py `ok`), so it stays pure."""
from __future__ import annotations

from actors.args import Args, Bool
from actors.devicegroup_market import market_ask
from actors.devicegroup_txn import AUTOPLAY_BATCH, PLAYER_STATE_CHANGED, TRACK_UNAVAILABLE, _err, _Txn
from actors.entity import Command, Outcome, op
from actors.player_state import end_of_context, skip_next
from catalog import find_track
from protocols.errors import ErrorCode


class EntitlementOps:
    def _ok(self, p: dict):
        """May `uri` play for this user now: in the catalog, licensed in the group's market and not
        explicit under the account's filter (the group's account facts, docs/rights.md). None without a catalog (pure tests of the state machine): everything may."""
        cat = self.env.catalog
        if cat is None:
            return None
        market, explicit = p.get("market"), p.get("explicit_filter", False)

        def ok(uri: str) -> bool:
            tr = find_track(cat, uri)
            return tr is not None and tr.restriction(market, explicit) is None
        return ok

    def _unavailable(self, p: dict, uri: str) -> dict | None:
        """Why `uri` may not play ({uri, reason: removed | market | explicit, market}), or None if it may."""
        if self.env.catalog is None:
            return None
        tr = self._track(uri)
        if tr is None:
            return {"uri": uri, "reason": "removed", "market": p.get("market")}
        why = tr.restriction(p.get("market"), p.get("explicit_filter", False))
        if why is not None:
            return {"uri": uri, "reason": why, "market": p.get("market")}
        return None

    def _refuse_unavailable(self, p: dict, uri: str) -> None:
        why = self._unavailable(p, uri)
        if why is not None:
            # `restriction`, not `reason`: a REST error's `reason` is Spotify's player reason (clients
            # look it up in their enums), and the details join that body
            where = {"market": f"in market {why['market']}", "removed": "any more",
                     "explicit": "with the account's explicit content filter on"}[why["reason"]]
            raise _err(ErrorCode.TRACK_UNAVAILABLE, f"{uri} is not available {where}", uri=uri,
                       restriction=why["reason"], market=why["market"])

    def _related(self, p: dict) -> list:
        """Autoplay's continuation of an ended context (docs/rights.md "Autoplay"): up to
        AUTOPLAY_BATCH tracks related to the last one played: the same artist's most popular, then
        its album neighbours (the tracks after it, then before), then the catalog's most popular;
        none already in the ended context, all playable in the market. Entries are
        [f"ap{playback_id}.{i}", uri]: unique, so a shuffled order and a replay find them again."""
        cat = self.env.catalog
        last = find_track(cat, p["uri"]) if p["uri"] else None
        if cat is None or last is None:
            return []
        market, explicit = p.get("market"), p.get("explicit_filter", False)
        seen = {uri for _, uri in p["tracks"]}
        seen.add(last.uri)
        out: list[str] = []

        def take(tracks) -> None:
            for tr in tracks:
                if len(out) >= AUTOPLAY_BATCH:
                    return
                if tr.uri not in seen and tr.restriction(market, explicit) is None:
                    seen.add(tr.uri)
                    out.append(tr.uri)

        for aid in last.artist_ids[:1]:
            take(cat.artist_top_tracks(aid, limit=50))
        album = cat.album_tracks(last.album_id)
        k = next((i for i, tr in enumerate(album) if tr.id == last.id), 0)
        take(album[k + 1:] + album[:k][::-1])
        take(cat.popular(200))
        return [[f"ap{p['playback_id']}.{i}", uri] for i, uri in enumerate(out)]

    @op("autoplay", role="user", args={"state": Bool(required=True)}, ask=market_ask)
    def _op_autoplay(self, cmd: Command, a: Args) -> Outcome:
        """Autoplay on or off (an extension: Spotify has no public API for it; docs/rights.md). A
        setting of the group, not playback control: free users may set it."""
        t = self._txn(cmd)
        self._settle(t)
        t.p["autoplay"] = a["state"]
        t.set_reason(PLAYER_STATE_CHANGED)
        return self._commit(t)

    @op("catalog_changed", system=True)
    def _op_catalog_changed(self, cmd: Command, a: Args) -> Outcome:
        """A catalog reload (docs/rights.md "Takedowns"): the gateway tells each device group it
        follows. If the current track may no longer play here (removed, or its market withdrawn),
        playback moves to the next track that may, as it was (playing or paused), or stops when
        none is left; the push carries `unavailable: {uri, reason, market}` and reason
        track_unavailable. Anything else (queued or upcoming tracks) is skipped when reached."""
        t = _Txn(self, cmd.now_ms)
        self._settle(t)
        self._move_off_unavailable(t)
        return self._commit(t)

    def _move_off_unavailable(self, t: _Txn) -> None:
        """If the current track may no longer play (taken down, not in the group's market now, or
        explicit with the account's filter now on):
        move to the next track that may, as it was (playing or paused), or stop on nothing when
        none is left; the push says why (`unavailable`, reason track_unavailable)."""
        p = t.p
        if p["uri"] is None:
            return
        why = self._unavailable(p, p["uri"])
        if why is None:
            return
        ok = self._ok(p)
        order = self._oc.get(p)
        if not skip_next(p, order, self._dur, t.now, auto=False, ok=ok):
            end_of_context(p, order, self._dur, t.now, ok)
            if p["uri"] == why["uri"]:                  # nothing playable left: stop on nothing
                p["uri"] = None
                p["duration_ms"] = 0
                p["position_ms"] = 0
                p["timestamp_ms"] = t.now
                p["playing"] = False
        t.note = why
        t.set_reason(TRACK_UNAVAILABLE)
