"""In-process servers for the integration tests (one per test module, a module-scoped `server`
fixture): the shared default is tests/conftest.py's `server` (SQLite store, tests/support/playlists.py
`local_spec`); a module that needs other settings declares its own `server` with `memory_server`.

    @pytest.fixture(scope="module")
    async def server(tmp_path_factory):
        async with memory_server(tmp_path_factory, "accounts", hosts=2) as srv:
            yield srv
"""
from __future__ import annotations

from contextlib import asynccontextmanager

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


def session_kinds():
    """A server's kinds (`ServerSpec.kinds="tests.support.servers:session_kinds"`): the session alone."""
    from actors.session import SessionEntity
    return {SessionEntity.kind: SessionEntity}


def admin_headers(server) -> dict:
    """An operator token's header (the /admin API)."""
    return {"Authorization": f"Bearer {server.auth.mint_operator()}"}
