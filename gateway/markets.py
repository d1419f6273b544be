"""The market of a request and of a user (docs/rights.md).

- `UserMarkets`: a user's country (the account entity's profile) as REST `market=from_token` and
  the edge's check of a stream fetch need it, cached for MARKET_TTL_S per user (a country change
  takes effect within that; a user without an account is DEFAULT_COUNTRY, as /v1/me answers).
  Playback commands carry no market: the device group holds the account's own, told by the
  account (actors/devicegroup_market.py); nothing here reaches a command.
- `request_market(request)`: the `market` query parameter: absent -> None (objects carry
  `available_markets`), an ISO 3166-1 alpha-2 code, or `from_token` (the caller's country; an
  app-only token has none: 400). Anything else: 400 INVALID_FIELD. Stored on the request so the
  presenters of the same request read it (`request.get(MARKET)`).
"""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from actors.account import ACCOUNT, DEFAULT_COUNTRY
from actors.entity import Principal
from catalog.markets import is_market
from protocols.errors import ErrorCode, SyncopateError

MARKET_TTL_S = 60.0
MAX_CACHED = 100_000
MARKET = web.RequestKey("syncopate_market", object)    # str | None: the request's market


class UserMarkets:
    def __init__(self, ctx: Any, ttl_s: float = MARKET_TTL_S) -> None:
        self.ctx = ctx
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[str, float]] = {}

    def cached(self, user_id: str) -> str | None:
        hit = self._cache.get(user_id)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    async def get(self, principal: Principal) -> str:
        uid = principal.user_id
        hit = self.cached(uid)
        if hit is not None:
            return hit
        try:
            acc = await self.ctx.call(ACCOUNT, uid, "me", {}, principal=principal)
            country = acc.get("country") or DEFAULT_COUNTRY
        except SyncopateError as err:
            if err.code != ErrorCode.NOT_FOUND:
                raise
            country = DEFAULT_COUNTRY
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[uid] = (country, time.monotonic() + self.ttl_s)
        return country

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)


async def request_market(request) -> str | None:
    """The request's market (see the module doc), remembered on the request."""
    from gateway.http import ctx, principal
    raw = request.query.get("market")
    if raw is None or raw == "":
        market = None
    elif raw == "from_token":
        p = principal(request)
        if getattr(p, "app_only", False) or getattr(p, "operator", False):
            raise SyncopateError(ErrorCode.BAD_REQUEST, "market=from_token needs a user's token")
        market = await ctx(request).markets.get(p)
    elif is_market(raw):
        market = raw
    else:
        raise SyncopateError(ErrorCode.INVALID_FIELD,
                             f"market must be an ISO 3166-1 alpha-2 code or from_token, not {raw[:20]!r}")
    request[MARKET] = market
    return market
