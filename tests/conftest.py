"""Shared fixtures: one local Ray per test session, servers on port 0, backend URLs.

Backends are required: a test that needs PostgreSQL or Redis fails when it is missing, it never
skips (SYNCOPATE_REQUIRE_SERVERS=1 in CI makes that explicit; locally it is the same).
"""
from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_DSN = os.environ.get("SYNCOPATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNCOPATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: starting Ray costs seconds on 2 cores."""
    import ray
    from syncopate.server import init_ray
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_server(ray_session, tmp_path_factory):
    """The real server (hosts + gateway as Ray actors, SQLite store), shared by the session's tests."""
    from syncopate.server import RayServer, ServerSpec
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("ray-server")), port=0, hosts=2,
                      log_level="WARNING")
    server = RayServer(spec).start()
    yield server
    server.stop()


@pytest.fixture
def unique():
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def blockbuster(request):
    """Fail any test whose event loop makes a blocking call (aiohttp's own suite does the same):
    a stray ray.get(), time.sleep() or synchronous file/socket I/O inside a coroutine is a bug.
    Sync tests and tests that drive Ray from the test process itself (marked `ray`) are exempt:
    Ray's client library does blocking I/O on the caller's thread by design."""
    if request.node.get_closest_marker("ray") or not _is_async(request):
        yield None
        return
    from blockbuster import BlockBuster
    bb = BlockBuster()
    bb.activate()
    try:
        yield bb
    finally:
        bb.deactivate()


def _is_async(request) -> bool:
    import inspect
    return inspect.iscoroutinefunction(getattr(request.node, "obj", None))


@pytest.fixture(autouse=True)
def _close_entity_drivers():
    """Entity drivers (tests/support/entities.py) own an event loop and a host: close what a test left open."""
    yield
    from tests.support.entities import close_all
    close_all()


@pytest.fixture(scope="module")
async def server(tmp_path_factory, request):
    """The default in-process server of a test module (SQLite store, 2 hosts, generous rates); a
    module that needs other settings declares its own `server` (tests/support/servers.py)."""
    from syncopate.server import LocalServer
    from tests.support.playlists import local_spec
    name = request.module.__name__.rpartition(".")[2]
    srv = await LocalServer(local_spec(str(tmp_path_factory.mktemp(name)))).start()
    yield srv
    await srv.stop()


@pytest.fixture
def cat(server):
    """The catalog the server runs."""
    return server.gateway.ctx.catalog


@pytest.fixture
def users(unique):
    """Fresh user ids for one test, one per role: owner, editor, viewer, follower, stranger."""
    return {r: f"{unique}{r[0]}" for r in ("owner", "editor", "viewer", "follower", "stranger")}


@pytest.fixture
async def http():
    """One HTTP client session per test (no per-host connection cap: some tests open many sockets)."""
    from simulations.client import new_session
    async with new_session() as s:
        yield s


# -- Node Yjs clients (tests/support/ynode.py) -------------------------------------------------------
@pytest.fixture(scope="session")
def node_ready():
    import shutil
    import subprocess
    from tests.support.ynode import NODE_DIR
    node = shutil.which("node")
    assert node, "node is required for the Yjs interop tests"
    if not (NODE_DIR / "node_modules" / "y-websocket").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True,
                       timeout=300)
    return node


@pytest.fixture
async def ynode(node_ready):
    from tests.support.ynode import YNode
    n = await YNode(node_ready).start()
    yield n
    await n.close()
