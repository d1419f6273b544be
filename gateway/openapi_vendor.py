"""Writes gateway/openapi_spotify.json: the part of the community's OpenAPI description of Spotify's
Web API that the gateway serves, converted from OpenAPI 3.0 to 3.1. Run by hand when the source
changes; the server only reads the JSON it writes (gateway/openapi.py).

Source: `fixed-spotify-open-api.yml` of https://github.com/sonallux/spotify-web-api (MIT License,
Copyright (c) 2020 sonallux), "Spotify Web API with fixes and improvements from sonallux".

  python -m gateway.openapi_vendor path/to/fixed-spotify-open-api.yml

What it keeps: the operations of SERVED (Spotify's paths, without the /v1 base), and every
component (schema, parameter, response) they reach through `$ref`. What it changes, and nothing
else: `nullable: true` becomes a JSON Schema type union with "null" (3.0 -> 3.1), and the
`x-spotify-*` annotations are dropped.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("openapi_spotify.json")
SOURCE = {"repository": "https://github.com/sonallux/spotify-web-api", "file": "fixed-spotify-open-api.yml",
          "license": "MIT License, Copyright (c) 2020 sonallux",
          "changes": "OpenAPI 3.0 -> 3.1 (nullable -> type unions); x-spotify-* annotations dropped; "
                     "only the operations the gateway serves and the components they reference"}

# Spotify's paths (base https://api.spotify.com/v1) the gateway serves, with their methods.
SERVED: dict[str, tuple[str, ...]] = {
    "/tracks/{id}": ("get",), "/tracks": ("get",),
    "/albums/{id}": ("get",), "/albums": ("get",), "/albums/{id}/tracks": ("get",),
    "/artists/{id}": ("get",), "/artists": ("get",), "/artists/{id}/albums": ("get",),
    "/artists/{id}/top-tracks": ("get",), "/search": ("get",),
    "/me": ("get",), "/users/{user_id}": ("get",),
    "/me/playlists": ("get", "post"), "/users/{user_id}/playlists": ("get", "post"),
    "/playlists/{playlist_id}": ("get", "put"),
    "/playlists/{playlist_id}/tracks": ("get", "post", "put", "delete"),
    "/playlists/{playlist_id}/items": ("get", "post", "put", "delete"),
    "/playlists/{playlist_id}/followers": ("put", "delete"),
    "/playlists/{playlist_id}/followers/contains": ("get",),
    "/me/library": ("put", "delete"), "/me/library/contains": ("get",),
    "/me/tracks": ("get", "put", "delete"), "/me/tracks/contains": ("get",),
    "/me/albums": ("get", "put", "delete"), "/me/albums/contains": ("get",),
    "/me/following": ("get", "put", "delete"), "/me/following/contains": ("get",),
    "/me/player": ("get", "put"), "/me/player/devices": ("get",), "/me/player/currently-playing": ("get",),
    "/me/player/play": ("put",), "/me/player/pause": ("put",), "/me/player/next": ("post",),
    "/me/player/previous": ("post",), "/me/player/seek": ("put",), "/me/player/repeat": ("put",),
    "/me/player/volume": ("put",), "/me/player/shuffle": ("put",), "/me/player/queue": ("get", "post"),
    "/me/player/recently-played": ("get",),
}


def convert(node):
    """OpenAPI 3.0 -> 3.1 for one node (recursively): nullable -> a union with null."""
    if isinstance(node, list):
        return [convert(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: convert(v) for k, v in node.items() if not k.startswith("x-spotify")}
    if out.pop("nullable", False):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:                       # a $ref / allOf / oneOf: a union with null
            desc = out.pop("description", None)
            out = {"anyOf": [out, {"type": "null"}]}
            if desc is not None:
                out["description"] = desc
    return out


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/"):
            found.add(r)
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def vendor(doc: dict) -> dict:
    paths = {}
    for path, methods in SERVED.items():
        item = doc["paths"][path]
        paths[path] = {m: item[m] for m in methods}
    comps: dict[str, dict] = {}
    todo: set[str] = set()
    refs(paths, todo)
    seen: set[str] = set()
    while todo:
        r = todo.pop()
        if r in seen:
            continue
        seen.add(r)
        _, _, section, name = r.split("/")
        node = doc["components"][section][name]
        comps.setdefault(section, {})[name] = node
        refs(node, todo)
    comps = {s: dict(sorted(v.items())) for s, v in sorted(comps.items())}
    return {"source": {**SOURCE, "version": doc["info"].get("version")},
            "paths": convert(copy.deepcopy(paths)), "components": convert(copy.deepcopy(comps)),
            "securitySchemes": doc["components"].get("securitySchemes", {})}


def main(argv: list[str]) -> int:
    import yaml
    doc = yaml.safe_load(Path(argv[0]).read_text())
    OUT.write_text(json.dumps(vendor(doc), indent=1, ensure_ascii=False, default=str) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
