"""Every error code the server answers with, and how it maps onto HTTP.

One enum serves the websocket (`error` frames carry `code`) and REST (Spotify's error shape
`{"error": {"status", "message", "reason"}}`, where `reason` is the same stable code).
Spotify's own player reasons (NO_ACTIVE_DEVICE, ALREADY_PAUSED, ...) are kept verbatim so that
clients written against Spotify recognise them.
"""
from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    # -- envelope / transport --------------------------------------------------------------
    MALFORMED_FRAME = "MALFORMED_FRAME"          # not JSON / msgpack, or not an object
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_FIELD = "INVALID_FIELD"              # missing or mistyped field
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    URI_TOO_LONG = "URI_TOO_LONG"                # request line over the HTTP parser's limit
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"      # a header over the parser's limit, or too many headers
    RATE_LIMITED = "RATE_LIMITED"
    # -- auth ------------------------------------------------------------------------------
    UNAUTHORIZED = "UNAUTHORIZED"                # missing / invalid token
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    SESSION_ENDED = "SESSION_ENDED"              # the device's session was signed out
    FORBIDDEN = "FORBIDDEN"
    PREMIUM_REQUIRED = "PREMIUM_REQUIRED"
    # -- resources ---------------------------------------------------------------------------
    NOT_FOUND = "NOT_FOUND"
    BAD_REQUEST = "BAD_REQUEST"
    INVALID_URI = "INVALID_URI"                  # malformed spotify uri
    UNKNOWN_URI = "UNKNOWN_URI"                  # well-formed, not in the catalog
    CONFLICT = "CONFLICT"                        # e.g. positions no longer exist at snapshot_id
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"            # e.g. more than 10,000 playlist entries
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    # -- runtime -----------------------------------------------------------------------------
    HOST_UNAVAILABLE = "HOST_UNAVAILABLE"        # retry with the same op id; it is idempotent
    STALE_EPOCH = "STALE_EPOCH"                  # this host no longer owns the entity
    NOT_OWNER = "NOT_OWNER"                      # the entity is placed on another host now (not run here): retry
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    OVERLOADED = "OVERLOADED"                    # a host budget is full (mailbox, pending, active): retry later
    INTERNAL = "INTERNAL"
    # -- Spotify player reasons (verbatim) -------------------------------------------------------
    NO_ACTIVE_DEVICE = "NO_ACTIVE_DEVICE"
    ALREADY_PAUSED = "ALREADY_PAUSED"
    NOT_PAUSED = "NOT_PAUSED"
    NO_NEXT_TRACK = "NO_NEXT_TRACK"
    NO_PREV_TRACK = "NO_PREV_TRACK"
    NO_SPECIFIC_TRACK = "NO_SPECIFIC_TRACK"
    VOLUME_CONTROL_DISALLOW = "VOLUME_CONTROL_DISALLOW"
    DEVICE_NOT_CONTROLLABLE = "DEVICE_NOT_CONTROLLABLE"
    REMOTE_CONTROL_DISALLOW = "REMOTE_CONTROL_DISALLOW"
    CONTEXT_DISALLOW = "CONTEXT_DISALLOW"
    UNKNOWN = "UNKNOWN"
    # -- rights (docs/rights.md) ---------------------------------------------------------------
    TRACK_UNAVAILABLE = "TRACK_UNAVAILABLE"      # not licensed in the user's market, or taken down
    STREAM_URL_REFUSED = "STREAM_URL_REFUSED"    # the edge: forged, expired or another device's URL
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_FRAME: 400,
    ErrorCode.UNKNOWN_MESSAGE_TYPE: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.URI_TOO_LONG: 414,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.SESSION_ENDED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.PREMIUM_REQUIRED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_URI: 400,
    ErrorCode.UNKNOWN_URI: 400,
    ErrorCode.CONFLICT: 409,
    ErrorCode.LIMIT_EXCEEDED: 400,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.HOST_UNAVAILABLE: 503,
    ErrorCode.STALE_EPOCH: 503,
    ErrorCode.NOT_OWNER: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NO_ACTIVE_DEVICE: 404,
    ErrorCode.ALREADY_PAUSED: 403,
    ErrorCode.NOT_PAUSED: 403,
    ErrorCode.NO_NEXT_TRACK: 403,
    ErrorCode.NO_PREV_TRACK: 403,
    ErrorCode.NO_SPECIFIC_TRACK: 403,
    ErrorCode.VOLUME_CONTROL_DISALLOW: 403,
    ErrorCode.DEVICE_NOT_CONTROLLABLE: 403,
    ErrorCode.REMOTE_CONTROL_DISALLOW: 403,
    ErrorCode.CONTEXT_DISALLOW: 403,
    ErrorCode.UNKNOWN: 400,
    ErrorCode.TRACK_UNAVAILABLE: 403,
    ErrorCode.STREAM_URL_REFUSED: 403,
    ErrorCode.RANGE_NOT_SATISFIABLE: 416,
}

# Spotify's own `reason` values (player errors). Spotify sends `error.reason` only for these, and
# clients rely on that: tekore looks every reason up in its PlayerErrorReason enum.
SPOTIFY_REASONS = frozenset({
    "NO_PREV_TRACK", "NO_NEXT_TRACK", "NO_SPECIFIC_TRACK", "ALREADY_PAUSED", "NOT_PAUSED",
    "NOT_PLAYING_LOCALLY", "NOT_PLAYING_TRACK", "NOT_PLAYING_CONTEXT", "ENDLESS_CONTEXT",
    "CONTEXT_DISALLOW", "ALREADY_PLAYING", "RATE_LIMITED", "REMOTE_CONTROL_DISALLOW",
    "DEVICE_NOT_CONTROLLABLE", "VOLUME_CONTROL_DISALLOW", "NO_ACTIVE_DEVICE", "PREMIUM_REQUIRED", "UNKNOWN"})

# Codes a client may retry with the same op id (the operation is idempotent).
RETRYABLE = frozenset({ErrorCode.HOST_UNAVAILABLE, ErrorCode.STALE_EPOCH, ErrorCode.NOT_OWNER,
                       ErrorCode.STORE_UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.RATE_LIMITED,
                       ErrorCode.OVERLOADED})


class SyncopateError(Exception):
    """A refusal with a stable code. Raised by entities and the gateway; never half-applied."""

    def __init__(self, code: ErrorCode | str, message: str = "", **details):
        self.code = ErrorCode(code)
        self.message = message or self.code.value.replace("_", " ").lower()
        self.details = details
        super().__init__(f"{self.code.value}: {self.message}")

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def to_wire(self) -> dict:
        """The `error` object of a websocket error frame."""
        out = {"code": self.code.value, "message": self.message, "status": self.status}
        if self.details:
            out["details"] = self.details
        return out

    def to_spotify(self) -> dict:
        """Spotify's REST error body: {"error": {"status", "message", "reason"?}} plus our stable
        `code` on every error. `reason` appears exactly where Spotify sends one (player errors)."""
        body = {"status": self.status, "message": self.message, "code": self.code.value}
        if self.code.value in SPOTIFY_REASONS:
            body["reason"] = self.code.value
        if self.details:
            body.update(self.details)
        return {"error": body}

    def __reduce__(self):  # survives pickling across Ray processes
        return (_rebuild, (self.code.value, self.message, self.details))


def _rebuild(code, message, details):
    return SyncopateError(code, message, **details)
