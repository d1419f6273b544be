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


def _lzf(data: bytes, size: int) -> bytes:
    """LZF decompression (liblzf's format, as RDB compresses strings)."""
    out, i = bytearray(), 0
    while i < len(data):
        ctrl = data[i]
        i += 1
        if ctrl < 32:                                   # a literal run of ctrl + 1 bytes
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
            continue
        n = ctrl >> 5                                   # a back reference
        if n == 7:
            n += data[i]
            i += 1
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        for _ in range(n + 2):
            out.append(out[ref])
            ref += 1
    assert len(out) == size, (len(out), size)
    return bytes(out)


def _rdb_len(b: bytes, i: int) -> tuple[int, int, bool]:
    """(value, next offset, special encoding?) of an RDB length."""
    t = b[i] >> 6
    if t == 0:
        return b[i] & 0x3F, i + 1, False
    if t == 1:
        return ((b[i] & 0x3F) << 8) | b[i + 1], i + 2, False
    if t == 3:
        return b[i] & 0x3F, i + 1, True
    if b[i] == 0x80:
        return int.from_bytes(b[i + 1:i + 5], "big"), i + 5, False
    return int.from_bytes(b[i + 1:i + 9], "big"), i + 9, False


def _rdb_string(b: bytes, i: int) -> tuple[bytes, int]:
    n, i, special = _rdb_len(b, i)
    if not special:
        return b[i:i + n], i + n
    if n in (0, 1, 2):                                  # an integer of 1, 2 or 4 bytes
        size = 1 << n
        return str(int.from_bytes(b[i:i + size], "little", signed=True)).encode(), i + size
    clen, i, _ = _rdb_len(b, i)                         # 3: LZF
    ulen, i, _ = _rdb_len(b, i)
    return _lzf(b[i:i + clen], ulen), i + clen


async def redis_stream_bytes(client, key: str) -> bytes:
    """Every byte Redis holds of a stream, deleted entries included: the DUMP of the key with its
    listpack nodes decompressed. (XRANGE would not show them: XDEL only flags an entry deleted in its
    node, whose bytes stay until the whole node goes, syncopate/events/stream_rebuild.py.)"""
    raw = await client.dump(key)
    if raw is None:
        return b""
    assert raw[0] in (15, 19, 21), f"not a stream DUMP (type {raw[0]})"
    n, i, _ = _rdb_len(raw, 1)
    out = b""
    for _ in range(n):
        node, i = _rdb_string(raw, i)
        lp, i = _rdb_string(raw, i)
        out += node + lp
    return out + raw[i:]                # the counters, groups, consumers and PEL, as they are
