"""The web player (gateway/static/) in a real browser: Debian's chromium driven by playwright-core
(tests/browser/player.mjs). `make test` installs both (Makefile: browser); this test fails, never
skips, when they are missing.

Two users sign in through the OAuth login page (PKCE, the built-in public client), edit one
collaborative playlist and each sees the other's edit within a second; the page transfers playback
to a websocket device (a real /v1/ws client here) and back. Screenshots go to a temporary
directory (SYNCOPATE_SCREENSHOTS=docs/screenshots refreshes the docs' images).
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from pathlib import Path

import aiohttp
import pytest

from actors.account import hash_password
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec
from tests.support.player import Device

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CHROMIUM = os.environ.get("SYNCOPATE_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("browser")), port=0, hosts=1, gateway={"rest_rate": 1000, "rest_burst": 1000})
    srv = await LocalServer(spec, store=MemoryStore()).start()
    yield srv
    await srv.stop()


async def test_web_player_in_chromium(server, unique):
    node, shots = await asyncio.to_thread(_prepare)
    alice, bob = f"{unique}a", f"{unique}b"
    cat = server.gateway.ctx.catalog
    tracks = sorted(cat.tracks, key=lambda t: t.id)
    pw = await asyncio.to_thread(hash_password, PASSWORD, secrets.token_bytes(16))
    async with aiohttp.ClientSession() as http:
        op = {"Authorization": f"Bearer {server.auth.mint_operator()}"}
        for uid, name in ((alice, "Alice"), (bob, "Bob")):
            r = await http.post(f"{server.url}/admin/users", headers=op,
                                json={"id": uid, "display_name": name, "password_hash": pw})
            assert r.status == 201, await r.text()
        ha = {"Authorization": f"Bearer {server.auth.mint(alice)}"}
        name = f"Road trip {unique}"
        r = await http.post(f"{server.url}/v1/me/playlists", headers=ha,
                            json={"name": name, "public": False, "collaborative": True})
        pid = (await r.json())["id"]
        r = await http.post(f"{server.url}/v1/playlists/{pid}/items", headers=ha,
                            json={"uris": [t.uri for t in tracks[:3]]})
        assert r.status == 201
        r = await http.put(f"{server.url}/v1/playlists/{pid}/collaborators/{bob}", headers=ha, json={"role": "editor"})
        assert r.status == 200, await r.text()
        # bob follows it, so it is in his library too
        hb = {"Authorization": f"Bearer {server.auth.mint(bob)}"}
        assert (await http.put(f"{server.url}/v1/playlists/{pid}/followers", headers=hb)).status == 200
        # a track to find and add: one search answers with, and not in the playlist yet
        pick = next(t for t in tracks[10:] if any(x.uri == t.uri for x in cat.search(t.name, "track", limit=10)["track"][0]))
        speaker = await Device(http, server.url, server.auth.mint(alice), "speaker-1",
                               name="Kitchen Speaker", type="speaker").connect()
        await speaker.register()
        beat = asyncio.create_task(_heartbeats(speaker))
        cfg = {"url": server.url, "alice": alice, "bob": bob, "password": PASSWORD, "playlist_name": name,
               "query": pick.name, "track_name": pick.name, "speaker": "Kitchen Speaker",
               "chromium": CHROMIUM, "screenshots": str(shots)}
        proc = await asyncio.create_subprocess_exec(node, str(HERE / "player.mjs"), json.dumps(cfg), cwd=str(HERE),
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        lines: list[str] = []
        dropped = 0
        try:
            async with asyncio.timeout(90):
                while raw := await proc.stdout.readline():
                    line = raw.decode().rstrip()
                    lines.append(line)
                    if line == "DROP":          # the script asks: close alice's page socket from the server
                        dropped = _drop_web_sockets(server, alice)
                        proc.stdin.write(b"DROPPED\n")
                        await proc.stdin.drain()
                    elif line == "TRANSFER":    # a transfer from elsewhere: REST, to the speaker
                        r = await http.put(f"{server.url}/v1/me/player", headers=ha,
                                           json={"device_ids": ["speaker-1"], "play": True})
                        assert r.status == 204, await r.text()
                        proc.stdin.write(b"TRANSFERRED\n")
                        await proc.stdin.drain()
                await proc.wait()
        except TimeoutError:
            proc.kill()
            raise
        finally:
            beat.cancel()
        text = "\n".join(lines)
        print(text)
        assert dropped == 1, dropped
        assert proc.returncode == 0 and text.rstrip().endswith("OK"), text
        # the speaker saw playback arrive and leave again
        got = await speaker.wait_for(lambda c: c["active_device_id"] == "speaker-1")
        await speaker.wait_for(lambda c: c["active_device_id"] not in (None, "speaker-1"),
                               start=speaker.pushes.index(got))
        sizes = await asyncio.to_thread(lambda: {p: (shots / f"{p}.png").stat().st_size for p in SHOTS})
        assert all(n > 10_000 for n in sizes.values()), sizes
        await speaker.ws.close()


def _drop_web_sockets(server, user: str) -> int:
    """Close the user's web player app sockets as a failing gateway would (1012: service restart)."""
    conns = [c for c in server.gateway.hub.conns.values() if c.principal.user_id == user and c.client == "web"]
    for c in conns:
        c.close(1012, "test: dropped")
    return len(conns)


SHOTS = ("login", "player", "playlist", "search", "devices")


def _prepare() -> tuple[str, Path]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run `make browser` (apt-get install chromium)"
    assert (HERE / "node_modules" / "playwright-core").is_dir(), "playwright-core missing: run `make browser`"
    node = shutil.which("node")
    assert node, "node missing"
    # A test run leaves the tracked tree alone: screenshots go to a temporary directory unless
    # SYNCOPATE_SCREENSHOTS names where (e.g. docs/screenshots, to refresh the docs' images).
    import os
    import tempfile
    shots = Path(os.environ.get("SYNCOPATE_SCREENSHOTS") or tempfile.mkdtemp(prefix="syncopate-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    return node, shots


async def _heartbeats(dev: Device) -> None:
    every = dev.cluster.get("heartbeat_interval_ms", 10_000) / 1000
    while True:
        await asyncio.sleep(every)          # the protocol's heartbeat period, not a synchronisation
        await dev.request("device.heartbeat", {"device_id": dev.device_id})
