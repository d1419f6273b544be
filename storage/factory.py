"""Which store `syncopate serve` runs on, from its flags.

no flags -> SQLite under the data dir (the embedded default); `--postgres-dsn` -> PostgreSQL;
`--postgres-dsn` and `--redis-url` -> tiered (Redis warm cache over PostgreSQL). `--redis-url`
alone is refused: Redis here runs without persistence, so nothing could be acknowledged durably.
The store is returned unstarted; the caller awaits `start()` (schema creation / upgrade).
"""
from __future__ import annotations

import os
from pathlib import Path

from storage.base import Store


def make_store(data_dir: str, redis_url: str | None = None, postgres_dsn: str | None = None,
               prefix: str = "syncopate_") -> Store:
    if postgres_dsn:
        from storage.postgres import PostgresStore
        pg = PostgresStore(postgres_dsn, prefix=prefix)
        if not redis_url:
            return pg
        from storage.redis import RedisStore
        from storage.tiered import TieredStore
        return TieredStore(pg, RedisStore(redis_url, prefix=prefix))
    if redis_url:
        raise ValueError("--redis-url needs --postgres-dsn: Redis is only the warm cache (it runs without "
                         "persistence, so no change could be acknowledged durably); add --postgres-dsn DSN "
                         "for the tiered store, or drop --redis-url for the embedded SQLite store")
    if os.environ.get("SYNCOPATE_SQLITE_PROCESS", "0") == "1":
        # Opt-in: the connection in a child process, the commit path off the host's GIL
        # (storage/sqlite_process.py). Not the default: on the shared 2-core machine it measured
        # slower than the thread (docs/performance.md, 2026-12-01 afternoon).
        from storage.sqlite_process import SQLiteProcessStore
        return SQLiteProcessStore(Path(data_dir) / "syncopate.db")
    from storage.sqlite import SQLiteStore
    return SQLiteStore(Path(data_dir) / "syncopate.db")
