"""The event pipeline as `syncopate serve` runs it (the real Ray server of tests/conftest.py: hosts,
gateway and the EventsActor consumer over the SQLite log): an upload through REST is counted by the
consumer actor, recently played shows it, a killed consumer actor is restarted by Ray and the
counts stay exact, and `syncopate events reconcile` on the data dir finds no difference."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest
import ray

from catalog import Catalog
from gateway.auth import Auth
from syncopate.cli import main


def req(url: str, token: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict | None]:
    r = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def until(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


@pytest.mark.ray
def test_serve_counts_uploads_through_the_consumer_actor_across_its_death(ray_server, unique):
    token = Auth(ray_server.secret).mint(unique)
    op = Auth(ray_server.secret).mint_operator()
    uris = [t.uri for t in Catalog.generated().tracks if t.duration_ms >= 90_000][:4]
    now = int(time.time() * 1000)

    def upload(first: int, n: int):
        evs = [{"event_id": f"{unique}-{i}", "device_id": "phone", "uri": uris[i % 4],
                "played_at_ms": now - 20_000_000 + i * 200_000, "ms_played": 60_000} for i in range(first, first + n)]
        s, res = req(f"{ray_server.url}/v1/me/player/events", token, "POST", {"events": evs})
        assert s == 200 and res["accepted"] == n, res

    def counted() -> int:
        s, res = req(f"{ray_server.url}/admin/events/stream-counts?uris={','.join(uris)}", op)
        assert s == 200, res
        return res["total"]

    base = counted()
    upload(0, 8)
    until(lambda: counted() == base + 8, "the first 8 streams counted")
    s, page = req(f"{ray_server.url}/v1/me/player/recently-played?limit=50", token)
    assert len(page["items"]) == 8
    # kill the consumer actor (Ray restarts it); what it held pending is claimed after CLAIM_IDLE_MS
    ray.kill(ray_server.events, no_restart=False)
    upload(8, 8)

    def supervised_count() -> bool:
        ray_server.supervise_once()         # what `serve` does every second: start the restarted consumer
        return counted() == base + 16
    until(supervised_count, "all 16 streams counted after the consumer's restart", timeout=60)
    assert main(["events", "reconcile", "--data-dir", ray_server.spec.data_dir]) == 0


@pytest.mark.ray
def test_serve_erases_a_deleted_users_pipeline_records(ray_server, unique):
    """Under `serve` the gateway's own connections to the bus and counts store do the pipeline's
    part of DELETE /v1/me (docs/data-rights.md) beside the consumer actor and the hosts."""
    from pathlib import Path
    token = Auth(ray_server.secret).mint(unique)
    op = Auth(ray_server.secret).mint_operator()
    uris = [t.uri for t in Catalog.generated().tracks if t.duration_ms >= 90_000][:4]
    now = int(time.time() * 1000)

    def counted() -> int:
        s, res = req(f"{ray_server.url}/admin/events/stream-counts?uris={','.join(uris)}", op)
        assert s == 200, res
        return res["total"]

    base = counted()
    evs = [{"event_id": f"d{i}", "device_id": "phone", "uri": uris[i], "played_at_ms": now - 9_000_000 + i * 300_000,
            "ms_played": 60_000} for i in range(4)]
    s, res = req(f"{ray_server.url}/v1/me/player/events", token, "POST", {"events": evs})
    assert s == 200 and res["accepted"] == 4, res
    def supervised_count() -> bool:
        # what `serve` does every second. The test above kills the consumer actor; when the killed
        # instance consumed its last uploads before it died, nothing started the restarted one (a
        # fixed race: this test failed 1 run in 2 after it on a loaded machine, never alone)
        ray_server.supervise_once()
        return counted() == base + 4
    until(supervised_count, "the 4 streams counted")
    s, receipt = req(f"{ray_server.url}/v1/me", token, "DELETE", {"confirm_user_id": unique})
    assert s == 200 and receipt["listening_events_anonymised"] == 4, receipt
    assert counted() == base + 4
    data = Path(ray_server.spec.data_dir)
    for name in ("events.db", "eventcounts.db"):
        raw = b"".join(p.read_bytes() for p in data.glob(name + "*"))
        assert unique.encode() not in raw, name
    assert main(["events", "reconcile", "--data-dir", ray_server.spec.data_dir]) == 0
