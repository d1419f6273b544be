"""Which OAuth scopes each REST route and each websocket message needs: ONE table, applied in the
REST middleware (gateway/middleware.py) and at websocket dispatch (gateway/ws.py).

Scopes are Spotify's names (docs/oauth.md). A rule is "any one of these scopes" (Spotify's
playlist modifications accept playlist-modify-public or -private; the entity still enforces who may
change which playlist) and whether the route needs a user: an app-only token (client credentials)
reaches only the catalog and public reads. A missing scope is Spotify's 403 "Insufficient client
scope"; a user route called with an app-only token is 401 ("This endpoint needs a user token").

REST rules match on the method and the request path (regular expressions, first match wins), not
on handler names, so the REST modules carry no auth code and can be refactored freely.
A /v1/ path that no rule names needs a user and no scope (DEFAULT_REST);
tests/test_oauth.py::test_every_route_is_classified checks every registered route has a rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType as T

SCOPES = ("user-read-private", "user-read-email", "user-read-playback-state", "user-modify-playback-state",
          "user-read-currently-playing", "streaming", "app-remote-control", "playlist-read-private",
          "playlist-read-collaborative", "playlist-modify-private", "playlist-modify-public",
          "user-library-read", "user-library-modify", "user-follow-read", "user-follow-modify",
          "user-read-recently-played", "user-read-playback-position", "user-top-read", "ugc-image-upload",
          "user-data-rights")     # our extension: export and delete the account (docs/data-rights.md)
ALL_SCOPES = frozenset(SCOPES)


@dataclass(frozen=True)
class Rule:
    any_of: tuple[str, ...] = ()     # empty: no scope needed
    user: bool = True                # False: an app-only (client credentials) token may call it
    all_of: tuple[str, ...] = ()     # and every one of these


PUBLIC = Rule(user=False)
USER = Rule()
MODIFY_PLAYLIST = Rule(("playlist-modify-public", "playlist-modify-private"))
READ_STATE = Rule(("user-read-playback-state",))
MODIFY_PLAYBACK = Rule(("user-modify-playback-state",))
LIB_READ, LIB_MODIFY = Rule(("user-library-read",)), Rule(("user-library-modify",))
DEVICE = Rule(("streaming", "app-remote-control"))
DATA_RIGHTS = Rule(all_of=("user-read-private", "user-data-rights"))   # export / delete the account
DEFAULT_REST = USER

_ID = r"[^/]+"
_W = ("PUT", "POST", "DELETE")
_LIB = r"/v1/me/(?:library|tracks|albums|shows|episodes|audiobooks)"

# (methods, path regex, rule): first match wins. Paths without their trailing slash.
REST_RULES: list[tuple[tuple[str, ...], re.Pattern, Rule]] = [(m, re.compile(p + r"$"), r) for m, p, r in [
    (("GET",), r"/v1/(?:tracks|albums|artists)(?:/.*)?", PUBLIC),
    (("GET",), r"/v1/(?:search|browse/.*|markets|recommendations.*|audio-features.*|audio-analysis/.*)", PUBLIC),
    (("GET",), rf"/v1/users/{_ID}", PUBLIC),
    (("GET",), rf"/v1/users/{_ID}/playlists", PUBLIC),
    (("GET",), rf"/v1/playlists/{_ID}(?:/tracks|/items|/followers/contains)?", PUBLIC),
    (("GET",), rf"/v1/playlists/{_ID}/collaborators", USER),
    (("GET",), r"/v1/me", USER),
    (("GET",), r"/v1/me/data-export", DATA_RIGHTS),
    (("DELETE",), r"/v1/me", DATA_RIGHTS),
    (("GET",), r"/v1/me/playlists", Rule(("playlist-read-private",))),
    (("POST",), r"/v1/me/playlists", MODIFY_PLAYLIST),
    (("POST",), rf"/v1/users/{_ID}/playlists", MODIFY_PLAYLIST),
    (("PUT",), rf"/v1/playlists/{_ID}", MODIFY_PLAYLIST),
    (_W, rf"/v1/playlists/{_ID}/(?:tracks|items|followers|collaborators/{_ID})", MODIFY_PLAYLIST),
    (("GET",), r"/v1/me/library/contains", Rule(("user-library-read", "user-follow-read", "playlist-read-private"))),
    (("PUT", "DELETE"), r"/v1/me/library", Rule(("user-library-modify", "user-follow-modify", "playlist-modify-public",
                                                 "playlist-modify-private"))),
    (("GET",), _LIB + r"(?:/contains)?", LIB_READ),
    (("PUT", "DELETE"), _LIB, LIB_MODIFY),
    (("GET",), r"/v1/me/following(?:/contains)?", Rule(("user-follow-read",))),
    (("PUT", "DELETE"), r"/v1/me/following", Rule(("user-follow-modify",))),
    (("GET",), r"/v1/me/player(?:/devices)?", READ_STATE),
    (("GET",), r"/v1/me/player/queue", Rule(("user-read-currently-playing", "user-read-playback-state"))),
    (("GET",), r"/v1/me/player/currently-playing", Rule(("user-read-currently-playing", "user-read-playback-state"))),
    (("GET",), r"/v1/me/player/(?:recently-played|stream-counts)", Rule(("user-read-recently-played",))),
    (("POST",), r"/v1/me/player/events", DEVICE),    # offline upload: what a playing device does
    (_W, r"/v1/me/player(?:/.*)?", MODIFY_PLAYBACK),
    (("GET", "DELETE"), r"/v1/me/sessions(?:/.*)?", USER),
    (("GET",), r"/v1/openapi\.json", PUBLIC),        # open: no token at all (gateway/middleware.py OPEN_PATHS)
]]

# websocket request type -> rule (types absent here: ping, auth, unsubscribe need none)
WS_RULES: dict[str, Rule] = {t.value: r for t, r in {
    T.PLAYLIST_CREATE: MODIFY_PLAYLIST, T.PLAYLIST_UPDATE_DETAILS: MODIFY_PLAYLIST, T.PLAYLIST_ADD: MODIFY_PLAYLIST,
    T.PLAYLIST_REORDER: MODIFY_PLAYLIST, T.PLAYLIST_REPLACE: MODIFY_PLAYLIST, T.PLAYLIST_REMOVE: MODIFY_PLAYLIST,
    T.PLAYLIST_FOLLOW: MODIFY_PLAYLIST, T.PLAYLIST_UNFOLLOW: MODIFY_PLAYLIST,
    T.PLAYLIST_SET_COLLABORATOR: MODIFY_PLAYLIST, T.PLAYLIST_REMOVE_COLLABORATOR: MODIFY_PLAYLIST,
    T.PLAYLIST_GET: USER, T.PLAYLIST_ITEMS: USER, T.PLAYLIST_COLLABORATORS: USER,
    T.DEVICE_REGISTER: DEVICE, T.DEVICE_HEARTBEAT: DEVICE, T.DEVICE_UPDATE: DEVICE, T.DEVICE_PROGRESS: DEVICE,
    T.DEVICE_EVENTS: DEVICE, T.PLAYER_PRIVATE_SESSION: MODIFY_PLAYBACK,
    T.PLAYER_STATE: READ_STATE, T.PLAYER_DEVICES: READ_STATE, T.PLAYER_QUEUE: READ_STATE,
    T.PLAYER_CURRENTLY_PLAYING: Rule(("user-read-currently-playing", "user-read-playback-state")),
    T.PLAYER_RECENTLY_PLAYED: Rule(("user-read-recently-played",)),
    T.PLAYER_TRANSFER: MODIFY_PLAYBACK, T.PLAYER_PLAY: MODIFY_PLAYBACK, T.PLAYER_PAUSE: MODIFY_PLAYBACK,
    T.PLAYER_NEXT: MODIFY_PLAYBACK, T.PLAYER_PREVIOUS: MODIFY_PLAYBACK, T.PLAYER_SEEK: MODIFY_PLAYBACK,
    T.PLAYER_REPEAT: MODIFY_PLAYBACK, T.PLAYER_SHUFFLE: MODIFY_PLAYBACK, T.PLAYER_VOLUME: MODIFY_PLAYBACK,
    T.PLAYER_QUEUE_ADD: MODIFY_PLAYBACK, T.PLAYER_AUTOPLAY: MODIFY_PLAYBACK,
    T.LIBRARY_SAVE: LIB_MODIFY, T.LIBRARY_REMOVE: LIB_MODIFY, T.LIBRARY_CONTAINS: LIB_READ, T.LIBRARY_LIST: LIB_READ,
    T.SESSION_LIST: USER, T.SESSION_END: USER, T.SESSION_RESUME: USER,
}.items()}
# subscribe, by entity kind
SUBSCRIBE_RULES: dict[str, Rule] = {"devicegroup": READ_STATE, "playlist": USER, "session": USER}


def rest_rule(method: str, path: str) -> Rule | None:
    """The rule for a request, or None for paths outside /v1/ (open or authenticated elsewhere)."""
    if not path.startswith("/v1/") and path != "/v1":
        return None
    path = path.rstrip("/") or "/"
    for methods, pattern, rule in REST_RULES:
        if method in methods and pattern.match(path):
            return rule
    return DEFAULT_REST


_WS_OPEN = frozenset({T.PING.value, T.AUTH.value, T.UNSUBSCRIBE.value})


def ws_rule(msg_type: str, payload) -> Rule:
    if msg_type == T.SUBSCRIBE.value:
        key = payload.get("entity") if isinstance(payload, dict) else None
        kind = key.partition(":")[0] if isinstance(key, str) else ""
        return SUBSCRIBE_RULES.get(kind, USER)
    rule = WS_RULES.get(msg_type)
    if rule is not None:
        return rule
    return PUBLIC if msg_type in _WS_OPEN else USER


def enforce(rule: Rule | None, principal) -> None:
    """Raise Spotify's refusal when `principal` (gateway.auth.TokenPrincipal) may not use `rule`."""
    if rule is None:
        return
    scopes = getattr(principal, "scopes", ALL_SCOPES)
    if rule.user and getattr(principal, "app_only", False):
        raise SyncopateError(ErrorCode.UNAUTHORIZED, "This endpoint needs a user token, not an app-only one")
    if rule.any_of and scopes is not ALL_SCOPES and scopes.isdisjoint(rule.any_of):
        raise SyncopateError(ErrorCode.FORBIDDEN, "Insufficient client scope")
    if rule.all_of and scopes is not ALL_SCOPES and not scopes.issuperset(rule.all_of):
        raise SyncopateError(ErrorCode.FORBIDDEN, "Insufficient client scope")


def check_ws(principal, msg_type: str, payload) -> None:
    """The websocket dispatch check (one call in gateway/ws.py)."""
    enforce(ws_rule(msg_type, payload), principal)


def parse_scope(raw: str | None) -> frozenset:
    """A space-separated scope string; unknown names are refused (OAuth's invalid_scope).

    Every open socket holds its token's principal, so the set is shared, not built per token:
    one frozenset per distinct scope string (ALL_SCOPES itself for a full one), made of the
    SCOPES strings. A fresh set of fresh strings per token was 3.6 KB per principal."""
    return _parsed(raw or "")


@lru_cache(maxsize=256)           # bounded: the scope strings are the clients' to choose
def _parsed(raw: str) -> frozenset:
    names = frozenset(x for x in raw.split() if x)
    unknown = names - ALL_SCOPES
    if unknown:
        raise ValueError(f"unknown scope {sorted(unknown)[0]!r}")
    if names == ALL_SCOPES:
        return ALL_SCOPES
    return frozenset(s for s in SCOPES if s in names)


def scope_string(scopes) -> str:
    return " ".join(s for s in SCOPES if s in scopes)
