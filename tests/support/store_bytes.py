"""Every byte a store holds, read beside it: how the data-rights tests check that an erased user's
id is nowhere (the SQLite file and its WAL, every PostgreSQL row of a table prefix, every Redis key
of a key prefix with its value)."""
from __future__ import annotations

import asyncio
from pathlib import Path

PG_TABLES = ("owners", "records", "snapshots", "meta")


async def redis_bytes(client, prefix: str) -> bytes:
    """Every key under `prefix` and its value, whatever its type (no DUMP: RDB compression would
    hide what a scan looks for)."""
    out = b""
    async for k in client.scan_iter(match=prefix + "*", count=1000):
        t = (await client.type(k)).decode()
        out += k + b"="
        if t == "string":
            out += await client.get(k) or b""
        elif t == "hash":
            out += b"|".join(a + b":" + b for a, b in (await client.hgetall(k)).items())
        elif t == "zset":
            out += b"|".join(await client.zrange(k, 0, -1))
        else:
            raise AssertionError(f"unexpected Redis type {t} for {k!r}")
    return out


async def sqlite_bytes(path: str | Path) -> bytes:
    """The database file and its WAL, as on disk."""
    path = Path(path)

    def read() -> bytes:
        out = b""
        for suffix in ("", "-wal"):
            f = path.with_name(path.name + suffix)
            if f.exists():
                out += f.read_bytes()
        return out
    return await asyncio.to_thread(read)


async def postgres_bytes(pg, prefix: str) -> bytes:
    """Every row of the prefix's tables (`pg`: a started storage.postgres.PostgresStore)."""
    out = b""
    async with pg._pool.acquire() as conn:
        for table in PG_TABLES:
            for row in await conn.fetch(f"SELECT * FROM {prefix}{table}"):
                out += b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values()) + b"\n"
    return out
