"""In-process servers for the integration tests (one per test module, a module-scoped `server`
fixture): the shared default is tests/conftest.py's `server` (SQLite store, tests/support/playlists.py
`local_spec`); a module that needs other settings declares its own `server` with `memory_server`.

    @pytest.fixture(scope="module")
    async def server(tmp_path_factory):
        async with memory_server(tmp_path_factory, "accounts", hosts=2) as srv:
            yield srv
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import orjson

from catalog import Catalog
from gateway.auth import write_secret
from storage.memory import MemoryStore
from syncopate.server import LocalServer, ServerSpec

REST_FAST = {"rest_rate": 1000, "rest_burst": 1000}     # tests make many REST calls in a row


@asynccontextmanager
async def memory_server(tmp_path_factory, name: str, *, hosts: int = 1, gateway: dict | None = None, **spec):
    """A LocalServer over the memory store (`srv.memory`), its data dir a fresh temp dir `name`."""
    store = MemoryStore()
    srv = await LocalServer(ServerSpec(data_dir=str(tmp_path_factory.mktemp(name)), port=0, hosts=hosts,
                                       gateway=dict(REST_FAST if gateway is None else gateway), **spec),
                            store=store).start()
    srv.memory = store
    try:
        yield srv
    finally:
        await srv.stop()


def write_server_files(tmp_path_factory, name: str, catalog: Catalog, secret: str) -> tuple[str, str]:
    """A fresh temp dir holding `catalog` as a file and the token secret: their two paths."""
    d = tmp_path_factory.mktemp(f"{name}-files")
    (d / "catalog.json").write_bytes(orjson.dumps(catalog.to_dict()))
    return str(d / "catalog.json"), str(write_secret(d / "secret.key", secret))


@asynccontextmanager
async def catalog_server(tmp_path_factory, name: str, catalog: Catalog, secret: str, **kw):
    """`memory_server` serving `catalog` (written to a file, as `--catalog` reads it) and signing
    tokens with `secret` (so a test mints its own)."""
    cat, key = await asyncio.to_thread(write_server_files, tmp_path_factory, name, catalog, secret)  # file I/O off the loop
    async with memory_server(tmp_path_factory, name, catalog=cat, secret_file=key, **kw) as srv:
        yield srv


def session_kinds():
    """A server's kinds (`ServerSpec.kinds="tests.support.servers:session_kinds"`): the session alone."""
    from actors.session import SessionEntity
    return {SessionEntity.kind: SessionEntity}


def admin_headers(server) -> dict:
    """An operator token's header (the /admin API)."""
    return {"Authorization": f"Bearer {server.auth.mint_operator()}"}
