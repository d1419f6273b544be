"""Tiered: PostgreSQL is the durable record, Redis a read-through warm cache for fast activation.

Roles. acquire(), append() and write_snapshot() go to PostgreSQL first and are acknowledged on its
commit; PostgreSQL alone fences (Redis never checks epochs here). load() reads Redis and falls back
to PostgreSQL, then fills the cache. After a committed append the cached tail is extended, after a
committed snapshot the cached snapshot replaced. durable = True.

Cache entry: ONE Redis hash per entity, `{prefix}c:{key}` = {l: last seq, s: snapshot seq,
d: snapshot data, t: tail}, the tail being packed records (8-byte seq, 4-byte length, data).
One key, so expiry (TTL) and maxmemory eviction drop an entry whole; a snapshot and a tail in
two keys could lose one and serve the other. Rejected: a field per record (compaction would
enumerate fields); a tail in a separate key with APPEND (the eviction problem above).

Coherence. Ordering alone cannot keep the cache fresh: the cache is written after the PG commit,
and the writer can crash, be cancelled or lose Redis between the two (and a fenced old owner's
late cache write can arrive after the new owner's). So staleness is made DETECTABLE instead:
  1. Invariant: an entry is exactly the committed state at its seq `l` (snapshot plus every
     committed record up to `l`). Fill writes a whole state loaded from PG and never lowers `l`;
     extend applies only when the entry ends exactly where the new records begin
     (`l == first seq - 1`), is a no-op when `l` already covers them, and deletes the entry on a
     gap; snapshot replaces the state at its seq. All three are Lua scripts (atomic). Records are
     unique per (key, seq) in PG, so a seq names one committed record whoever writes the cache.
  2. A load serves the entry only if `l >= last`, the last committed seq according to PG, read
     (an index lookup, no snapshot bytes) concurrently with the cache read: an entry behind PG
     is a miss, loaded from PG and refilled. If `l >= last` the entry is a committed state at
     least as new as PG's at that read, so the load is never older than a commit that preceded
     it. An activation is acquire() (one PG statement) then load() (PG seq lookup || Redis).
     Rejected: returning the last seq from acquire() and trusting it in the next load() (saves
     one PG lookup per load, not per activation: acquire() needed a second statement for it),
     because a load() that does not directly follow its acquire(), e.g. by a host that was
     fenced meanwhile, would serve a stale entry.
So the cache can lag, but a lagging entry is never served. What the cache saves is the snapshot
and tail read from PG (heap and TOAST pages, the part that misses PG's buffer cache when the
working set outgrows its memory), not the round trip: with everything in PG's memory, as in
simulations.bench_store on one machine, warm tiered and plain PG activations cost about the same.
The cache write sits on the ack path (append returns after it): ~0.2 ms for a one-record
append, ~4 ms for a 500-record batch here. Rejected for now: a background cache writer after
the ack (the seq checks would keep it correct), which is one more task to own, bound and drain. A failed cache write after a commit
also deletes the entry (best effort, to not keep a dead entry), but correctness doesn't depend on
it. Assumption: the cache is not older than the PG it fronts (after restoring PG from a backup,
flush the cache prefix). The runtime numbers records 1, 2, 3, ...; with gaps the extend path
deletes entries (still correct, just colder).
"""
from __future__ import annotations

import asyncio
import struct

from redis.exceptions import RedisError

from storage.base import Append, Dropped, Loaded, Record, Snapshot, Store, unavailable
from storage.postgres import PostgresStore
from storage.redis import RedisStore

_HDR = struct.Struct(">QI")

# KEYS: entry. ARGV: last, snapshot seq ('' for none), snapshot data, tail, ttl ms.
FILL = """
local l = redis.call('HGET', KEYS[1], 'l')
if l and tonumber(l) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'l', ARGV[1], 't', ARGV[4])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 's', ARGV[2], 'd', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: entries. ARGV: ttl ms, max tail bytes, then per key: prev seq, last seq, packed records.
EXTEND = """
local out = {}
for i = 1, #KEYS do
  local k, prev, last, blob = KEYS[i], tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1]), ARGV[3*i+2]
  local l = redis.call('HGET', k, 'l')
  if not l or tonumber(l) >= last then
    out[i] = 0
  elseif tonumber(l) ~= prev or redis.call('HSTRLEN', k, 't') + #blob > tonumber(ARGV[2]) then
    redis.call('DEL', k)
    out[i] = -1
  else
    redis.call('HSET', k, 'l', last, 't', (redis.call('HGET', k, 't') or '') .. blob)
    redis.call('PEXPIRE', k, ARGV[1])
    out[i] = 1
  end
end
return out
"""

# KEYS: entry. ARGV: seq, data, ttl ms.
SNAPSHOT = """
local e = redis.call('HMGET', KEYS[1], 'l', 's')
local seq = tonumber(ARGV[1])
if e[2] and tonumber(e[2]) >= seq then return 0 end
if not e[1] or tonumber(e[1]) <= seq then
  redis.call('HSET', KEYS[1], 'l', ARGV[1], 's', ARGV[1], 'd', ARGV[2], 't', '')
else
  redis.call('HSET', KEYS[1], 's', ARGV[1], 'd', ARGV[2])   -- tail records <= seq: dropped on read
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def pack(records) -> bytes:
    return b"".join(_HDR.pack(r.seq, len(r.data)) + r.data for r in records)


def unpack(blob: bytes, after: int) -> list[Record]:
    out, pos, mv = [], 0, memoryview(blob)
    while pos < len(blob):
        seq, n = _HDR.unpack_from(blob, pos)
        pos += _HDR.size
        if seq > after:
            out.append(Record(seq, bytes(mv[pos:pos + n])))
        pos += n
    return out


class TieredStore(Store):
    name = "tiered"
    durable = True

    def __init__(self, durable: PostgresStore, cache: RedisStore, *, ttl: float = 7 * 86400,
                 max_tail_bytes: int = 256 * 1024) -> None:
        self.pg = durable
        self.cache = cache
        self.ttl_ms = int(ttl * 1000)
        self.max_tail_bytes = max_tail_bytes
        r = cache.client
        self._fill, self._extend, self._snap = (r.register_script(s) for s in (FILL, EXTEND, SNAPSHOT))
        self.stats = {"hits": 0, "misses": 0, "stale": 0, "new": 0, "cache_errors": 0}

    def _k(self, key: str) -> str:
        return f"{self.cache.prefix}c:{key}"

    async def start(self) -> None:
        await self.pg.start()
        await self.cache.start()     # misconfigured Redis fails the start; at runtime we degrade

    async def close(self) -> None:
        await self.cache.close()
        await self.pg.close()

    async def ping(self) -> bool:
        return await self.pg.ping()    # Redis down = slower, not unavailable

    async def _invalidate(self, keys: list[str]) -> None:
        self.stats["cache_errors"] += 1
        try:
            await self.cache.client.delete(*(self._k(k) for k in keys))
        except (RedisError, OSError):
            pass     # the entry stays, detectably stale (see the module docstring)

    # -- contract ----------------------------------------------------------------------------
    async def acquire(self, key: str, holder: str | None = None) -> int:
        return await self.pg.acquire(key, holder)

    # Leases and membership live in PostgreSQL alone (it fences; the cache holds no owner state).
    async def release(self, key: str, epoch: int, holder: str) -> bool:
        return await self.pg.release(key, epoch, holder)

    async def open_lease(self, holder: str, lease_s: float) -> bool:
        return await self.pg.open_lease(holder, lease_s)

    async def renew_lease(self, holder: str, lease_s: float) -> bool:
        return await self.pg.renew_lease(holder, lease_s)

    async def revoke_lease(self, holder: str) -> None:
        await self.pg.revoke_lease(holder)

    async def membership(self, name: str):
        return await self.pg.membership(name)

    async def change_membership(self, name: str, expected_epoch: int, members: dict[int, str]):
        return await self.pg.change_membership(name, expected_epoch, members)

    async def drop_dead(self, older_than_s: float) -> Dropped:
        return await self.pg.drop_dead(older_than_s)

    async def _cached(self, key: str):
        try:
            return await self.cache.client.hmget(self._k(key), "l", "s", "d", "t")
        except (RedisError, OSError):
            self.stats["cache_errors"] += 1
            return None

    async def load(self, key: str) -> Loaded:
        cached = asyncio.ensure_future(self._cached(key))   # Redis runs while PG answers
        try:
            last = await self.pg.last_seq(key)
        except BaseException:
            cached.cancel()
            raise
        entry = await cached
        if last < 0:                     # PG holds nothing for this key: no snapshot to fetch
            self.stats["new"] += 1
            return Loaded(None, [])
        if entry is not None and entry[0] is not None:
            if int(entry[0]) >= last:
                self.stats["hits"] += 1
                snap = Snapshot(int(entry[1]), bytes(entry[2])) if entry[1] is not None else None
                return Loaded(snap, unpack(entry[3] or b"", snap.seq if snap else -1))
            self.stats["stale"] += 1
        self.stats["misses"] += 1
        loaded = await self.pg.load(key)
        await self._fill_from(key, loaded)
        return loaded

    async def _fill_from(self, key: str, loaded: Loaded) -> None:
        tail = pack(loaded.records)
        if (loaded.snapshot is None and not loaded.records) or len(tail) > self.max_tail_bytes:
            return
        snap = loaded.snapshot
        try:
            await self._fill(keys=[self._k(key)], args=[
                loaded.last_seq, snap.seq if snap else "", snap.data if snap else b"", tail, self.ttl_ms])
        except (RedisError, OSError):
            self.stats["cache_errors"] += 1   # nothing written (one script), or a complete entry

    async def append(self, batch: list[Append]) -> list:
        # PG first: the change is acknowledged on its commit, whatever happens to the cache.
        results = await self.pg.append(batch)
        # A cancellation or crash from here on leaves the cache behind PG; load() detects that.
        per_key: dict[str, list[Record]] = {}
        for item, res in zip(batch, results):
            if res is None and item.records:
                per_key.setdefault(item.key, []).extend(item.records)
        if per_key:
            keys, args = [], [self.ttl_ms, self.max_tail_bytes]
            for key, recs in per_key.items():
                keys.append(self._k(key))
                args += [recs[0].seq - 1, recs[-1].seq, pack(recs)]
            try:
                await self._extend(keys=keys, args=args)
            except (RedisError, OSError):
                await self._invalidate(list(per_key))
        return results

    async def erase(self, key: str, epoch: int) -> bool:
        """PostgreSQL first (it fences), then the cache entry. Unlike a write, a failed cache delete
        is an error (STORE_UNAVAILABLE): the entry would keep the erased bytes until its TTL, so the
        caller retries; erase() of the already erased key deletes the entry only."""
        erased = await self.pg.erase(key, epoch)
        try:
            await self.cache.client.delete(self._k(key))
        except (RedisError, OSError) as exc:
            self.stats["cache_errors"] += 1
            raise unavailable(self.name, exc) from exc
        return erased

    async def purge(self) -> None:
        await self.pg.purge()

    async def write_snapshot(self, key: str, epoch: int, snapshot: Snapshot) -> None:
        await self.pg.write_snapshot(key, epoch, snapshot)     # raises STALE_EPOCH: cache untouched
        try:
            await self._snap(keys=[self._k(key)], args=[snapshot.seq, snapshot.data, self.ttl_ms])
        except (RedisError, OSError):
            await self._invalidate([key])
