"""The OpenAPI 3.1 description of everything the gateway serves under /v1, served at GET /v1/openapi.json
(gateway/rest_openapi.py) and kept true by tests/test_openapi.py, which validates real answers
against it and checks that every registered /v1 route is described and nothing else is.

Built from two parts:
  - Spotify's operations, parameters and schemas from gateway/openapi_spotify.json: the community's
    description of Spotify's Web API (https://github.com/sonallux/spotify-web-api,
    `fixed-spotify-open-api.yml`, MIT License, Copyright (c) 2020 sonallux), the subset we serve,
    converted to 3.1 by gateway/openapi_vendor.py. Paths get our /v1 base; security is ours
    (gateway/scopes.py); every operation also lists the errors our middleware answers, in
    Spotify's error shape.
  - Our extensions (collaborators, sessions, stream counts, the websockets, this document), each
    marked `x-syncopate-extension: true`, as are the fields we add to Spotify's objects.

FIXES lists where the community description is stricter than Spotify's own prose (fields Spotify
documents as "Can be `null`" that the schema does not allow null for); DEVIATIONS where our
answers differ from Spotify's on purpose. Both are applied to the vendored schemas here, never to
the vendored file.
"""
from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path

from gateway import scopes
from gateway.oauth import SCOPE_TEXT

VENDORED = Path(__file__).with_name("openapi_spotify.json")
EXT = "x-syncopate-extension"
JSON = "application/json"
ERROR_CODES = ("400", "401", "403", "404", "429", "503")


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _nullable(schema: dict) -> dict:
    t = schema.get("type")
    if isinstance(t, list) and "null" in t or any({"type": "null"} in schema.get(k, []) for k in ("anyOf", "oneOf")):
        return schema
    if isinstance(t, str):
        return {**schema, "type": [schema["type"], "null"]}
    desc = schema.get("description")
    out = {"anyOf": [{k: v for k, v in schema.items() if k != "description"}, {"type": "null"}]}
    return {**out, "description": desc} if desc else out


# (schema, property): Spotify documents the field as "Can be `null`" (or sends null) but the community
# schema does not say so.
FIXES_NULLABLE = [
    ("CurrentlyPlayingContextObject", "context"), ("CurrentlyPlayingContextObject", "progress_ms"),
    ("CurrentlyPlayingContextObject", "item"), ("CurrentlyPlayingObject", "context"),
    ("CurrentlyPlayingObject", "progress_ms"), ("CurrentlyPlayingObject", "item"),
    ("QueueObject", "currently_playing"), ("PlayHistoryObject", "context"),
    ("CursorPagingObject", "next"), ("CursorPagingObject", "cursors"), ("CursorObject", "after"), ("CursorObject", "before"),
    ("PlaylistTrackObject", "track"), ("PlaylistTrackObject", "item"), ("PlaylistTrackObject", "added_by"),
    ("PlaylistTrackObject", "added_at"), ("SimplifiedPlaylistObject", "public"),
    ("SimplifiedPlaylistObject", "description"), ("PlaylistObject", "public"), ("PlaylistObject", "description"),
    ("FollowersObject", "href"), ("PrivateUserObject", "display_name"), ("PrivateUserObject", "email"),
]

# (schema, property, schema): fields our answers add to Spotify's objects.
EXTENSION_FIELDS = [
    ("PlaylistTrackObject", "entry_id", {"type": "string", "description":
        "The entry's stable id in the collaborative playlist document (docs/playlist-document.md): "
        "addresses one occurrence of a track in `playlist.changed` deltas and websocket edits."}),
    ("ErrorObject", "code", {"type": "string", "description":
        "Syncopate's stable error code (protocols/errors.py), on every error; `reason` is Spotify's "
        "player error reason where Spotify sends one. Other fields (e.g. `limit`, `retry_after_ms`) "
        "detail the error."}),
]


def _schema(name: str, comps: dict) -> dict:
    """The object schema a component's properties live in (directly, or its last allOf part)."""
    s = comps[name]
    if "properties" in s:
        return s
    for part in reversed(s.get("allOf", [])):
        if "properties" in part:
            return part
    raise KeyError(name)


def _find_prop(name: str, prop: str, comps: dict) -> dict:
    s = comps[name]
    for part in [s, *s.get("allOf", [])]:
        if prop in part.get("properties", {}):
            return part["properties"]
        if "$ref" in part and part is not s:
            try:
                return _find_prop(part["$ref"].rsplit("/", 1)[1], prop, comps)
            except KeyError:
                pass
    raise KeyError(f"{name}.{prop}")


# -- our own schemas ---------------------------------------------------------------------------------
ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": _ref("ErrorObject")}}

OWN_SCHEMAS = {
    "ErrorResponse": ERROR,
    "Collaborators": {EXT: True, "type": "object", "required": ["owner", "collaborators"], "properties": {
        "owner": {"type": "string", "description": "The owner's user id."},
        "collaborators": {"type": "array", "items": {
            "type": "object", "required": ["user_id", "role"], "additionalProperties": False, "properties": {
                "user_id": {"type": "string"}, "role": {"type": "string", "enum": ["editor", "viewer"]}}}}}},
    "CollaboratorRole": {EXT: True, "type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": ["editor", "viewer"]}}},
    "Sessions": {EXT: True, "type": "object", "required": ["sessions", "version"], "properties": {
        "version": {"type": "integer", "description": "The session entity's version."},
        "sessions": {"type": "array", "items": {
            "type": "object", "required": ["conn", "device_id", "client", "gateway", "connected_since", "last_seen",
                                           "this_device"],
            "additionalProperties": False, "properties": {
                "conn": {"type": "string"}, "device_id": {"type": ["string", "null"]},
                "client": {"type": ["string", "null"]}, "gateway": {"type": "string"},
                "connected_since": {"type": "integer", "description": "unix ms"},
                "last_seen": {"type": "integer", "description": "unix ms"},
                "this_device": {"type": "boolean", "description": "A connection of the device the calling token "
                                                                  "is bound to."}}}}}},
    "SessionEnded": {EXT: True, "type": "object", "required": ["device_id", "closed", "version"],
                     "additionalProperties": False, "properties": {
                         "device_id": {"type": "string"},
                         "closed": {"type": "integer", "minimum": 0, "description": "Connections closed."},
                         "version": {"type": "integer"}}},
    "StreamCounts": {EXT: True, "type": "object", "required": ["user_id", "counts", "total"],
                     "additionalProperties": False, "properties": {
                         "user_id": {"type": "string"},
                         "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                                    "description": "Streams per track uri (the asked uris, or every streamed one)."},
                         "total": {"type": "integer", "minimum": 0, "description": "All the user's streams."}}},
    "OpenApiDocument": {EXT: True, "type": "object", "required": ["openapi", "info", "paths"]},
    "ListeningEventUpload": {EXT: True, "type": "object", "required": ["events"], "additionalProperties": False,
                             "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 200, "items": {
                                 "type": "object", "required": ["event_id", "device_id", "uri", "played_at_ms", "ms_played"],
                                 "properties": {
                                     "event_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$",
                                                  "description": "The client's id of the event (unique per user)."},
                                     "device_id": {"type": "string", "minLength": 1, "maxLength": 128,
                                                   "description": "The device that played it."},
                                     "uri": {"type": "string", "description": "The track's Spotify uri."},
                                     "context_uri": {"type": ["string", "null"],
                                                     "description": "The playlist, album, artist or show it was played from."},
                                     "played_at_ms": {"type": "integer", "minimum": 1,
                                                      "description": "Client time the play started (unix ms): at most "
                                                                     "2 minutes ahead of the server, at most 30 days old."},
                                     "ms_played": {"type": "integer", "minimum": 0,
                                                   "description": "How long it played; at most the track's duration + 2 s."},
                                     "market": {"type": ["string", "null"], "pattern": "^[A-Z]{2}$",
                                                "description": "The market at play time (ISO 3166-1 alpha-2)."},
                                     "private": {"type": "boolean",
                                                 "description": "Played in a private session (default false)."}}}}}},
    "ListeningEventResults": {EXT: True, "type": "object", "required": ["results", "accepted", "duplicate", "refused"],
                              "properties": {
                                  "results": {"type": "array", "items": {
                                      "type": "object", "required": ["event_id", "status"], "properties": {
                                          "event_id": {"type": ["string", "null"]},
                                          "status": {"type": "string", "enum": ["accepted", "duplicate", "refused"]},
                                          "reason": {"type": "string", "enum": [
                                              "invalid_event", "unknown_track", "ms_played_exceeds_duration",
                                              "overlapping_play", "concurrent_plays", "time_in_future", "time_too_old",
                                              "event_id_reused", "play_limit"]},
                                          "message": {"type": "string"},
                                          "play_id": {"type": "string", "description": "The play the event belongs to."},
                                          "stream": {"type": "boolean", "description": "ms_played >= 30 s"}}}},
                                  "accepted": {"type": "integer"}, "duplicate": {"type": "integer"},
                                  "refused": {"type": "integer"}}},
    "DataExport": {EXT: True, "type": "object", "description": "Everything the server holds about the user "
                   "(docs/data-rights.md).",
                   "required": ["format", "user_id", "exported_at_ms", "account", "library", "playlists", "devices",
                                "player", "recently_played", "listening", "sessions"], "properties": {
                       "format": {"type": "integer", "const": 1},
                       "user_id": {"type": "string"}, "exported_at_ms": {"type": "integer"},
                       "account": {"type": ["object", "null"], "description": "Profile and app grants; null for a "
                                   "user with no account (a token minted by `syncopate token`)."},
                       "library": {"type": "object", "description": "Saved tracks, albums, followed artists: "
                                   "[{id, uri, added_at}] per type."},
                       "playlists": {"type": "object", "required": ["owned", "followed", "collaborating"],
                                     "properties": {k: {"type": "array", "items": {"type": "object"}}
                                                    for k in ("owned", "followed", "collaborating")}},
                       "devices": {"type": "array", "items": {"type": "object"}},
                       "player": {"type": ["object", "null"]},
                       "recently_played": {"type": "array", "items": {"type": "object"}},
                       "listening": {"type": "object"}, "sessions": {"type": "object"}}},
    "DeletionRequest": {EXT: True, "type": "object", "required": ["confirm_user_id"], "additionalProperties": False,
                        "properties": {"confirm_user_id": {"type": "string", "description": "The caller's own user "
                                                           "id: a stray call deletes nothing."}}},
    "DeletionReceipt": {EXT: True, "type": "object", "additionalProperties": False,
                        "required": ["deletion_id", "started_ms", "finished_ms", "playlists_anonymised",
                                     "playlists_deleted", "entities_erased", "listening_events_anonymised"],
                        "properties": {
                            "deletion_id": {"type": "string", "description": "The receipt's id; the audit record "
                                            "keeps it and the times, nothing that names the user."},
                            "started_ms": {"type": "integer"}, "finished_ms": {"type": "integer"},
                            "playlists_anonymised": {"type": "integer", "minimum": 0},
                            "playlists_deleted": {"type": "integer", "minimum": 0},
                            "entities_erased": {"type": "integer", "minimum": 0},
                            "listening_events_anonymised": {
                                "type": "integer", "minimum": 0,
                                "description": "The user's stream events the event pipeline keeps without them (so "
                                               "the stream counts still reconcile); their other events are deleted."}}},
}

# -- our own operations ------------------------------------------------------------------------------
P_PLAYLIST = {"$ref": "#/components/parameters/PathPlaylistId"}
P_USER = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "A user id."}
P_DEVICE = {"name": "device_id", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200}, "description": "The device to sign out."}
P_TOKEN = {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
           "description": "The access token, for clients that cannot set the Authorization header (browsers)."}
SNAPSHOT = {"$ref": "#/components/responses/PlaylistSnapshotId"}
UPGRADE = {"description": "Switching Protocols: the websocket is open."}

OWN_PATHS = {
    "/v1/playlists/{playlist_id}/collaborators": {"get": {
        "operationId": "get-playlist-collaborators", "tags": ["Playlists"], "summary": "Get Playlist Collaborators",
        "description": "The playlist's collaborators and their roles (owner only).", "parameters": [P_PLAYLIST],
        "responses": {"200": _json(_ref("Collaborators"), "The owner and the collaborators")}}},
    "/v1/playlists/{playlist_id}/collaborators/{user_id}": {
        "put": {"operationId": "set-playlist-collaborator", "tags": ["Playlists"],
                "summary": "Add a collaborator or change their role",
                "description": "Owner only. An editor may change the items, a viewer may read a private playlist.",
                "parameters": [P_PLAYLIST, P_USER],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CollaboratorRole")}}},
                "responses": {"200": SNAPSHOT}},
        "delete": {"operationId": "remove-playlist-collaborator", "tags": ["Playlists"],
                   "summary": "Remove a collaborator", "description": "Owner only.",
                   "parameters": [P_PLAYLIST, P_USER], "responses": {"200": SNAPSHOT}}},
    "/v1/me/player/stream-counts": {"get": {
        "operationId": "get-stream-counts", "tags": ["Player"], "summary": "Get the user's stream counts",
        "description": "How often the user streamed each track (a stream: 30 s of play), for royalty reporting.",
        "parameters": [{"name": "uris", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "Comma-separated track uris, at most 1000; without it every streamed track."}],
        "responses": {"200": _json(_ref("StreamCounts"), "The counts")}}},
    "/v1/me/player/events": {"post": {
        "operationId": "upload-listening-events", "tags": ["Player"], "summary": "Upload listening events",
        "description": "Offline batch upload (docs/events.md): each event is accepted, a duplicate of a play already "
                       "recorded (same track, start within 5 s), or refused with a stable reason. One play counts "
                       "as one stream (30 s) whatever the event ids and devices. Needs the streaming scope.",
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ListeningEventUpload")}}},
        "responses": {"200": _json(_ref("ListeningEventResults"), "One result per event, in order")}}},
    "/v1/me/player/private-session": {"put": {
        "operationId": "set-private-session", "tags": ["Player"], "summary": "Turn the private session on or off",
        "description": "For the user's whole device group (devices show `is_private_session`): plays are counted "
                       "for royalties but kept out of recently played and recommendations.",
        "parameters": [{"name": "state", "in": "query", "required": True,
                        "schema": {"type": "string", "enum": ["true", "false"]}}],
        "responses": {"204": {"description": "Set"}}}},
    "/v1/me/data-export": {"get": {
        "operationId": "get-data-export", "tags": ["Users"], "summary": "Export all your data",
        "description": "Everything the server holds about the caller, as JSON: account, library, playlists owned, "
                       "followed and collaborated on (with their entries), devices and playback, recently played, "
                       "stream counts, sessions (docs/data-rights.md).",
        "responses": {"200": _json(_ref("DataExport"), "The export")}}},
    "/v1/me": {"delete": {
        "operationId": "delete-current-user", "tags": ["Users"], "summary": "Delete your account and data",
        "description": "Erases the caller's entities and records in every store, anonymises their entries in other "
                       "people's playlists, deletes their own playlists, closes their sockets and refuses their "
                       "tokens. Idempotent; a crash mid-way is resumed (docs/data-rights.md).",
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("DeletionRequest")}}},
        "responses": {"200": _json(_ref("DeletionReceipt"), "Deleted")}}},
    "/v1/me/player/autoplay": {"put": {
        "operationId": "set-autoplay", "tags": ["Player"], "summary": "Turn autoplay on or off",
        "description": "When a context ends with autoplay on, playback continues with related tracks (the same "
                       "artist, then album neighbours, then popular), playable in the user's market; the playback "
                       "state marks them (`autoplay: {enabled, active, from}`). Spotify has no public API for it "
                       "(docs/rights.md). A setting, not playback control: free users may change it.",
        "parameters": [{"name": "state", "in": "query", "required": True,
                        "schema": {"type": "string", "enum": ["true", "false"]}},
                       {"name": "device_id", "in": "query", "required": False, "schema": {"type": "string"}}],
        "responses": {"204": {"description": "Done"}}}},
    "/v1/me/sessions": {"get": {
        "operationId": "get-sessions", "tags": ["Sessions"], "summary": "The user's open connections",
        "description": "Every open websocket connection of the user, on every gateway (docs/sessions.md).",
        "responses": {"200": _json(_ref("Sessions"), "The connections")}}},
    "/v1/me/sessions/{device_id}": {"delete": {
        "operationId": "end-session", "tags": ["Sessions"], "summary": "Sign a device out",
        "description": "Closes every connection of the device and refuses its tokens from then on (SESSION_ENDED).",
        "parameters": [P_DEVICE], "responses": {"200": _json(_ref("SessionEnded"), "The device is signed out")}}},
    "/v1/ws": {"get": {
        "operationId": "websocket", "tags": ["Websocket"], "summary": "The realtime websocket",
        "description": "Syncopate's websocket protocol (docs/protocol.md): playlists, Connect devices, sessions, "
                       "the library. The token comes in the Authorization header, `?token=` or the first frame.",
        "parameters": [P_TOKEN], "responses": {"101": UPGRADE}}},
    "/v1/yjs/playlists/{playlist_id}": {"get": {
        "operationId": "yjs-playlist", "tags": ["Websocket"], "summary": "A playlist as a Yjs document",
        "description": "y-websocket's sync protocol on one playlist (docs/yjs.md); read-only without a "
                       "playlist-modify scope.", "parameters": [P_PLAYLIST, P_TOKEN], "responses": {"101": UPGRADE}}},
    "/v1/openapi.json": {"get": {
        "operationId": "openapi", "tags": ["Meta"], "summary": "This document", "security": [],
        "responses": {"200": _json(_ref("OpenApiDocument"), "The OpenAPI 3.1 description of /v1")}}},
}

# Answers that differ from Spotify's description on purpose: (path, method) -> {status: response}.
# Each is marked `x-syncopate-deviation` with what Spotify does instead.
def _deviation(response: dict, spotify: str) -> dict:
    return {**response, "x-syncopate-deviation": spotify}


_EMPTY_OBJECT = _json({"type": "object", "maxProperties": 0}, "Done: an empty JSON object")
DEVIATIONS: dict[tuple[str, str], dict] = {
    # spotipy 2.26 returns the parsed body, and tests/test_library_rest.py pins `{}`
    ("/v1/me/library", "put"): {"200": _deviation(_EMPTY_OBJECT, "Spotify answers 200 with no body")},
    ("/v1/me/library", "delete"): {"200": _deviation(_EMPTY_OBJECT, "Spotify answers 200 with no body")},
}


# Parameters we accept beyond Spotify's description of the operation: (path, method) -> parameters.
_IDS_QUERY = {"name": "ids", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "Comma-separated ids, instead of the body (Spotify's earlier form; tekore sends it)."}
EXTRA_PARAMS: dict[tuple[str, str], list] = {
    ("/v1/me/tracks", "put"): [_IDS_QUERY],
}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def _security(method: str, path: str) -> tuple[list, dict]:
    rule = scopes.rest_rule(method.upper(), _concrete(path))
    if rule is None:
        return [], {}
    if rule.all_of:
        sec = [{"oauth2": list(rule.all_of)}]          # one requirement: every scope of it
    elif rule.any_of:
        sec = [{"oauth2": [s]} for s in rule.any_of]
    else:
        sec = [{"oauth2": []}]
    return sec, {"x-syncopate-app-token": not rule.user}


def _finish(path: str, method: str, op: dict, own: bool) -> dict:
    op = copy.deepcopy(op)
    if own:
        op[EXT] = True
    if "security" not in op or not own:
        sec, extra = _security(method, path)
        if path.startswith(("/v1/ws", "/v1/yjs/")):
            sec, extra = [{"oauth2": []}], {}
        op["security"] = sec
        op.update(extra)
    responses = op.setdefault("responses", {})
    for code, resp in responses.items():
        # FIX: a few community error responses are the bare ErrorObject; Spotify wraps it in "error"
        if resp.get("content", {}).get(JSON, {}).get("schema") == _ref("ErrorObject"):
            responses[code] = {"$ref": "#/components/responses/Error"}
    responses.update(DEVIATIONS.get((path, method), {}))
    if (path, method) in EXTRA_PARAMS:
        op["parameters"] = [*op.get("parameters", []), *EXTRA_PARAMS[(path, method)]]
    if op["security"]:
        for code in ERROR_CODES:
            responses.setdefault(code, {"$ref": "#/components/responses/Error"})
    else:
        responses.setdefault("404", {"$ref": "#/components/responses/Error"})
    responses.setdefault("default", {"$ref": "#/components/responses/Error"})
    return op


def build() -> dict:
    vendored = json.loads(VENDORED.read_text())
    comps = copy.deepcopy(vendored["components"])
    schemas = comps["schemas"]
    for name, prop in FIXES_NULLABLE:
        props = _find_prop(name, prop, schemas)
        props[prop] = _nullable(props[prop])
    for name, prop, schema in EXTENSION_FIELDS:
        _schema(name, schemas).setdefault("properties", {})[prop] = {**schema, EXT: True}
    schemas.update(copy.deepcopy(OWN_SCHEMAS))
    # Spotify's error responses, and ours, all in the one error shape
    for name in ("Unauthorized", "Forbidden", "TooManyRequests"):
        comps["responses"][name]["content"][JSON]["schema"] = _ref("ErrorResponse")
    comps["responses"]["Error"] = _json(_ref("ErrorResponse"), "An error, in Spotify's shape")
    spotify_flow = vendored["securitySchemes"]["oauth_2_0"]["flows"]["authorizationCode"]["scopes"]
    scope_text = {s: SCOPE_TEXT.get(s) or spotify_flow.get(s, s).strip() for s in scopes.SCOPES}
    comps["securitySchemes"] = {"oauth2": {
        "type": "oauth2", "description": "Spotify's OAuth 2.0 as served by this gateway (docs/oauth.md): the "
        "access token is a bearer token. Operations marked `x-syncopate-app-token: true` also accept a client "
        "credentials token; the others need a user's token.",
        "flows": {"authorizationCode": {"authorizationUrl": "/authorize", "tokenUrl": "/api/token",
                                        "refreshUrl": "/api/token", "scopes": scope_text},
                  "clientCredentials": {"tokenUrl": "/api/token", "scopes": {}}}}}

    paths: dict[str, dict] = {}
    for spath, ops in vendored["paths"].items():
        path = "/v1" + spath
        paths[path] = {m: _finish(path, m, op, own=False) for m, op in ops.items()}
    for path, ops in OWN_PATHS.items():
        paths.setdefault(path, {}).update({m: _finish(path, m, op, own=True) for m, op in ops.items()})
    src = vendored["source"]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Syncopate REST API", "version": "1",
                 "description": "Spotify's Web API as Syncopate serves it, and Syncopate's extensions (marked "
                                f"`{EXT}: true`). Spotify's part is from {src['repository']} ({src['file']}, "
                                f"version {src['version']}; {src['license']}). Every path carries the /v1 base; "
                                "every error is Spotify's `{\"error\": {\"status\", \"message\", \"code\", "
                                "\"reason\"?}}`.",
                 "license": {"name": "MIT (Spotify's description, by sonallux)", "identifier": "MIT"}},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": dict(sorted(paths.items())),
        "components": comps,
        "tags": [{"name": t} for t in ("Albums", "Artists", "Tracks", "Search", "Users", "Playlists", "Library",
                                       "Player", "Sessions", "Websocket", "Meta")],
    }


@cache
def document_bytes() -> bytes:
    return json.dumps(build(), ensure_ascii=False, separators=(",", ":")).encode()


def document() -> dict:
    return json.loads(document_bytes())
