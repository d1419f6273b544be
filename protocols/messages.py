"""Every message type on the client websocket, and which entity handles it.

Envelope (JSON text frame or msgpack binary frame, same schema; the server answers in the encoding
the client used):

  request   {"id": "r1", "type": "playlist.add", "payload": {...}, "op_id": "optional-idempotency-key"}
  result    {"id": "r1", "type": "result", "payload": {...}, "version": 12}
  error     {"id": "r1", "type": "error", "error": {"code": "INVALID_FIELD", "message": "...", "status": 400}}
  push      {"type": "playlist.changed", "entity": "playlist:37i9...", "version": 12, "payload": {...}}

`id` is chosen by the client and echoed; `op_id` makes a mutation safe to retry (the same op id is
applied once and answered with the first answer). docs/protocol.md shows complete exchanges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class MessageType(str, Enum):
    # -- connection -------------------------------------------------------------------------
    PING = "ping"
    PONG = "pong"
    RESULT = "result"
    ERROR = "error"
    HELLO = "hello"                              # server -> client on connect: user, server clock
    SUBSCRIBE = "subscribe"                      # {"entity": "playlist:ID", "since": version?}
    UNSUBSCRIBE = "unsubscribe"
    RESYNC = "resync"                            # server -> client: a subscription re-established after
                                                 # its host restarted or a gap; payload = a subscribe answer
    SUBSCRIPTION_ENDED = "subscription.ended"    # server -> client: {entity, error}: access withdrawn
    AUTH = "auth"                                # {"token": ...}: renew the socket's token (same user)
    AUTH_EXPIRED = "auth.expired"                # server -> client: the token expired; the socket closes (4401)
    # -- playlists (issue 3) ----------------------------------------------------------------
    PLAYLIST_CREATE = "playlist.create"
    PLAYLIST_GET = "playlist.get"
    PLAYLIST_UPDATE_DETAILS = "playlist.update_details"
    PLAYLIST_ITEMS = "playlist.items"
    PLAYLIST_ADD = "playlist.add"
    PLAYLIST_REORDER = "playlist.reorder"
    PLAYLIST_REPLACE = "playlist.replace"
    PLAYLIST_REMOVE = "playlist.remove"
    PLAYLIST_FOLLOW = "playlist.follow"
    PLAYLIST_UNFOLLOW = "playlist.unfollow"
    PLAYLIST_COLLABORATORS = "playlist.collaborators"
    PLAYLIST_SET_COLLABORATOR = "playlist.set_collaborator"
    PLAYLIST_REMOVE_COLLABORATOR = "playlist.remove_collaborator"
    PLAYLIST_CHANGED = "playlist.changed"        # push
    PLAYLIST_ACCESS = "playlist.access"          # push: the access policy changed (protocols/access.py)
    # -- Connect (issue 4) ------------------------------------------------------------------
    DEVICE_REGISTER = "device.register"
    DEVICE_HEARTBEAT = "device.heartbeat"
    DEVICE_UPDATE = "device.update"
    DEVICE_PROGRESS = "device.progress"          # listening report from the active device
    DEVICE_EVENTS = "device.events"              # offline batch upload of listening events (docs/events.md)
    PLAYER_PRIVATE_SESSION = "player.private_session"   # {enabled}: the device group's private session
    PLAYER_STATE = "player.state"
    PLAYER_DEVICES = "player.devices"
    PLAYER_CURRENTLY_PLAYING = "player.currently_playing"
    PLAYER_TRANSFER = "player.transfer"
    PLAYER_PLAY = "player.play"
    PLAYER_PAUSE = "player.pause"
    PLAYER_NEXT = "player.next"
    PLAYER_PREVIOUS = "player.previous"
    PLAYER_SEEK = "player.seek"
    PLAYER_REPEAT = "player.repeat"
    PLAYER_SHUFFLE = "player.shuffle"
    PLAYER_VOLUME = "player.volume"
    PLAYER_QUEUE = "player.queue"
    PLAYER_QUEUE_ADD = "player.queue_add"
    PLAYER_RECENTLY_PLAYED = "player.recently_played"
    PLAYER_CHANGED = "player.changed"            # push: the whole device group ("cluster")
    # -- user session and library (issue 5) ---------------------------------------------------
    LIBRARY_SAVE = "library.save"
    LIBRARY_REMOVE = "library.remove"
    LIBRARY_CONTAINS = "library.contains"
    LIBRARY_LIST = "library.list"
    LIBRARY_CHANGED = "library.changed"          # push
    SESSION_LIST = "session.list"
    SESSION_END = "session.end"
    SESSION_RESUME = "session.resume"
    SESSION_CHANGED = "session.changed"          # push: connections / presence
    SESSION_ENDED = "session.ended"              # push: this connection was signed out


# Entity kinds. An entity key is "<kind>:<id>".
PLAYLIST = "playlist"
DEVICE_GROUP = "devicegroup"                     # one per user: the user's devices and playback
SESSION = "session"                              # one per user: connections, presence, library


@dataclass(frozen=True)
class Route:
    kind: str
    op: str
    id_field: str | None = None                  # payload field naming the entity; None = the caller's user id


def _r(kind: str, op: str, id_field: str | None = None) -> Route:
    return Route(kind, op, id_field)


# Which entity handles each client request type. Types absent here are handled by the gateway
# itself (ping, subscribe, unsubscribe) or are server -> client only.
ROUTES: dict[MessageType, Route] = {
    MessageType.PLAYLIST_CREATE: _r(PLAYLIST, "create", "id"),
    MessageType.PLAYLIST_GET: _r(PLAYLIST, "get", "id"),
    MessageType.PLAYLIST_UPDATE_DETAILS: _r(PLAYLIST, "update_details", "id"),
    MessageType.PLAYLIST_ITEMS: _r(PLAYLIST, "items", "id"),
    MessageType.PLAYLIST_ADD: _r(PLAYLIST, "add", "id"),
    MessageType.PLAYLIST_REORDER: _r(PLAYLIST, "reorder", "id"),
    MessageType.PLAYLIST_REPLACE: _r(PLAYLIST, "replace", "id"),
    MessageType.PLAYLIST_REMOVE: _r(PLAYLIST, "remove", "id"),
    MessageType.PLAYLIST_FOLLOW: _r(PLAYLIST, "follow", "id"),
    MessageType.PLAYLIST_UNFOLLOW: _r(PLAYLIST, "unfollow", "id"),
    MessageType.PLAYLIST_COLLABORATORS: _r(PLAYLIST, "collaborators", "id"),
    MessageType.PLAYLIST_SET_COLLABORATOR: _r(PLAYLIST, "set_collaborator", "id"),
    MessageType.PLAYLIST_REMOVE_COLLABORATOR: _r(PLAYLIST, "remove_collaborator", "id"),
    MessageType.DEVICE_REGISTER: _r(DEVICE_GROUP, "register"),
    MessageType.DEVICE_HEARTBEAT: _r(DEVICE_GROUP, "heartbeat"),
    MessageType.DEVICE_UPDATE: _r(DEVICE_GROUP, "update_device"),
    MessageType.DEVICE_PROGRESS: _r(DEVICE_GROUP, "progress"),
    MessageType.DEVICE_EVENTS: _r(DEVICE_GROUP, "upload_events"),
    MessageType.PLAYER_PRIVATE_SESSION: _r(DEVICE_GROUP, "private_session"),
    MessageType.PLAYER_STATE: _r(DEVICE_GROUP, "state"),
    MessageType.PLAYER_DEVICES: _r(DEVICE_GROUP, "devices"),
    MessageType.PLAYER_CURRENTLY_PLAYING: _r(DEVICE_GROUP, "currently_playing"),
    MessageType.PLAYER_TRANSFER: _r(DEVICE_GROUP, "transfer"),
    MessageType.PLAYER_PLAY: _r(DEVICE_GROUP, "play"),
    MessageType.PLAYER_PAUSE: _r(DEVICE_GROUP, "pause"),
    MessageType.PLAYER_NEXT: _r(DEVICE_GROUP, "next"),
    MessageType.PLAYER_PREVIOUS: _r(DEVICE_GROUP, "previous"),
    MessageType.PLAYER_SEEK: _r(DEVICE_GROUP, "seek"),
    MessageType.PLAYER_REPEAT: _r(DEVICE_GROUP, "repeat"),
    MessageType.PLAYER_SHUFFLE: _r(DEVICE_GROUP, "shuffle"),
    MessageType.PLAYER_VOLUME: _r(DEVICE_GROUP, "volume"),
    MessageType.PLAYER_QUEUE: _r(DEVICE_GROUP, "queue"),
    MessageType.PLAYER_QUEUE_ADD: _r(DEVICE_GROUP, "queue_add"),
    MessageType.PLAYER_RECENTLY_PLAYED: _r(DEVICE_GROUP, "recently_played"),
    MessageType.LIBRARY_SAVE: _r(SESSION, "library_save"),
    MessageType.LIBRARY_REMOVE: _r(SESSION, "library_remove"),
    MessageType.LIBRARY_CONTAINS: _r(SESSION, "library_contains"),
    MessageType.LIBRARY_LIST: _r(SESSION, "library_list"),
    MessageType.SESSION_LIST: _r(SESSION, "list_connections"),
    MessageType.SESSION_END: _r(SESSION, "end_connection"),
    MessageType.SESSION_RESUME: _r(SESSION, "resume"),
}

CLIENT_TYPES = frozenset(ROUTES) | {MessageType.PING, MessageType.SUBSCRIBE, MessageType.UNSUBSCRIBE, MessageType.AUTH}


@dataclass
class Envelope:
    """A decoded client request."""
    type: MessageType
    id: Any = None
    payload: dict = field(default_factory=dict)
    op_id: str | None = None
