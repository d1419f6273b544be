"""The market of a request and of a user (docs/rights.md).

- `UserMarkets`: a user's country and explicit content filter (the account entity's profile) as
  REST reads with a market (`market=from_token`, the filter of a user's token) and the edge's check
  of a stream fetch need them, cached for MARKET_TTL_S per user (a change takes effect within that;
  a user without an account is DEFAULT_COUNTRY, filter off, as /v1/me answers). Playback commands
  carry neither: the device group holds the account's own, told by the account
  (actors/devicegroup_market.py); nothing here reaches a command.
- `request_market(request)`: the `market` query parameter: absent -> None (objects carry
  `available_markets`), an ISO 3166-1 alpha-2 code, or `from_token` (the caller's country; an
  app-only token has none: 400). Anything else: 400 INVALID_FIELD. Stored on the request so the
  presenters of the same request read it (`request.get(MARKET)`); with a market and a user's token,
  the user's explicit content filter too (`request_filter(request)`: explicit tracks are then
  `is_playable: false`, `restrictions: {reason: "explicit"}`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from actors.account import ACCOUNT, DEFAULT_COUNTRY
from actors.entity import Principal
from catalog.markets import is_market
from protocols.errors import ErrorCode, SyncopateError

MARKET_TTL_S = 60.0
MAX_CACHED = 100_000
MARKET = web.RequestKey("syncopate_market", object)    # str | None: the request's market
EXPLICIT_FILTER = web.RequestKey("syncopate_explicit_filter", bool)   # the caller's filter (with a market)


@dataclass(frozen=True)
class Listener:
    """What decides what may play for a user: their market and their explicit content filter."""
    country: str
    explicit_filter: bool = False


class UserMarkets:
    def __init__(self, ctx: Any, ttl_s: float = MARKET_TTL_S) -> None:
        self.ctx = ctx
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[Listener, float]] = {}

    def cached_listener(self, user_id: str) -> Listener | None:
        hit = self._cache.get(user_id)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    async def listener(self, principal: Principal) -> Listener:
        uid = principal.user_id
        hit = self.cached_listener(uid)
        if hit is not None:
            return hit
        try:
            acc = await self.ctx.call(ACCOUNT, uid, "me", {}, principal=principal)
            who = Listener(acc.get("country") or DEFAULT_COUNTRY,
                           bool((acc.get("explicit_content") or {}).get("filter_enabled")))
        except SyncopateError as err:
            if err.code != ErrorCode.NOT_FOUND:
                raise
            who = Listener(DEFAULT_COUNTRY)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[uid] = (who, time.monotonic() + self.ttl_s)
        return who

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)


async def request_market(request) -> str | None:
    """The request's market (see the module doc), remembered on the request."""
    from gateway.http import ctx, principal
    raw = request.query.get("market")
    who: Listener | None = None
    if raw is None or raw == "":
        market = None
    elif raw == "from_token":
        p = principal(request)
        if getattr(p, "app_only", False) or getattr(p, "operator", False):
            raise SyncopateError(ErrorCode.BAD_REQUEST, "market=from_token needs a user's token")
        who = await ctx(request).markets.listener(p)
        market = who.country
    elif is_market(raw):
        market = raw
    else:
        raise SyncopateError(ErrorCode.INVALID_FIELD,
                             f"market must be an ISO 3166-1 alpha-2 code or from_token, not {raw[:20]!r}")
    request[MARKET] = market
    if market is not None:
        # a user's token: their filter (app and operator tokens have no listener)
        from gateway.http import PRINCIPAL
        p = request.get(PRINCIPAL)
        if p is not None and not (getattr(p, "app_only", False) or getattr(p, "operator", False)):
            if who is None:
                who = await ctx(request).markets.listener(p)
            request[EXPLICIT_FILTER] = who.explicit_filter
    return market


def request_filter(request) -> bool:
    """The caller's explicit content filter, as request_market found it (False without a market)."""
    return request.get(EXPLICIT_FILTER, False)
