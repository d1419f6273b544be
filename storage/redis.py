"""Redis: the warm tier, usable alone as a contract backend but never as the acknowledging store.

`durable = False`: the Redis deployed with Syncopate runs without RDB/AOF persistence, so a commit
here survives nothing; the factory refuses Redis without PostgreSQL, and the tiered store uses it
as a cache over PostgreSQL (storage.tiered).

Layout, per entity key K under prefix p: `p o:K` the epoch (a counter, so acquire() is INCR),
`p s:K` a hash {seq, data} holding the snapshot, `p r:K` a sorted set of records scored by seq,
each member being the 8-byte big-endian seq followed by the data (members must be unique, the
seq makes them so). Rejected: one hash per entity with a field per record: loading the tail
would fetch and sort every field, and compaction could not use ZREMRANGEBYSCORE.

Every check-and-write is one Lua script (EVALSHA through redis-py Script objects), so the epoch
check and the write are atomic and a whole batch is one round trip. Redis runs a script to
completion without interleaving, but does not roll back what a failing script already wrote:
the append script therefore validates the whole batch (epochs, seqs strictly after the last
stored one) before its first write. Client retries are disabled: a retried EVALSHA after a lost
reply would be a second append; an error is reported as STORE_UNAVAILABLE instead. Multi-key
batches span hash slots, so this backend targets a single Redis (or a proxy), not Redis Cluster.
"""
from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import RedisError
from redis.utils import get_lib_version

from protocols.errors import ErrorCode, SyncopateError
from storage.base import Append, Loaded, Record, Snapshot, Store, stale, unavailable

# KEYS: per item (owner, records, snapshot). ARGV: per item epoch, count, then count x (seq, member).
# Returns per item -1 (committed) or the current epoch (0: never acquired).
APPEND = """
local n = #KEYS / 3
local out, ok, last, start = {}, {}, {}, {}
local a = 1
for i = 1, n do
  local o, r, s = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local count = tonumber(ARGV[a+1])
  start[i] = a + 2
  local cur = redis.call('GET', o)
  if cur and tonumber(cur) == tonumber(ARGV[a]) then
    local l = last[r]
    if l == nil then
      local top = redis.call('ZRANGE', r, -1, -1, 'WITHSCORES')
      l = tonumber(top[2] or '0')
      local ss = tonumber(redis.call('HGET', s, 'seq') or '0')
      if ss > l then l = ss end
    end
    for j = 0, count - 1 do
      local seq = tonumber(ARGV[start[i] + 2*j])
      if seq <= l then
        return redis.error_reply('DUPSEQ ' .. r .. ': seq ' .. seq .. ' is not after ' .. l)
      end
      l = seq
    end
    last[r] = l
    ok[i] = count
    out[i] = -1
  else
    out[i] = tonumber(cur or '0')
  end
  a = a + 2 + 2 * count
end
for i = 1, n do
  if ok[i] then
    for j = 0, ok[i] - 1 do
      redis.call('ZADD', KEYS[3*i-1], ARGV[start[i] + 2*j], ARGV[start[i] + 2*j + 1])
    end
  end
end
return out
"""

# KEYS: owner, snapshot, records. ARGV: epoch, seq, data. Returns -1 or the current epoch.
SNAPSHOT = """
local cur = redis.call('GET', KEYS[1])
if not cur or tonumber(cur) ~= tonumber(ARGV[1]) then return tonumber(cur or '0') end
local old = redis.call('HGET', KEYS[2], 'seq')
if not old or tonumber(ARGV[2]) > tonumber(old) then
  redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'data', ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
return -1
"""

# KEYS: snapshot, records. One script = one consistent read of both.
LOAD = """
local s = redis.call('HMGET', KEYS[1], 'seq', 'data')
local recs = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. (s[1] or '0'), '+inf')
return {s[1], s[2], recs}
"""

# KEYS: owner, floor. A key with no owner counter starts above the epoch floor (storage.base).
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], redis.call('GET', KEYS[2]) or '0')
end
return redis.call('INCR', KEYS[1])
"""

# KEYS: owner, snapshot, records, floor. ARGV: epoch. Returns -1 (erased), 0 (nothing stored) or
# the current epoch (refused).
ERASE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return tonumber(cur) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local f = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[1]) > f then redis.call('SET', KEYS[4], ARGV[1]) end
return -1
"""

_ERRORS = (RedisError, OSError)


_DRIVER = DriverInfo(name="redis-py", lib_version=get_lib_version())   # at import: reads metadata


def connect(url: str, **kw) -> aioredis.Redis:
    """A bytes-in/bytes-out client without transparent retries (see the module docstring).

    The driver info (CLIENT SETINFO) is resolved once here: left to its default, redis-py reads
    its package metadata from disk on every new connection, inside the event loop."""
    kw.setdefault("socket_timeout", 5)
    kw.setdefault("socket_connect_timeout", 5)
    kw.setdefault("driver_info", _DRIVER)
    return aioredis.from_url(url, decode_responses=False, retry=Retry(NoBackoff(), 0), **kw)


class RedisStore(Store):
    name = "redis"
    durable = False

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "syncopate_", *,
                 client: aioredis.Redis | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.client = client or connect(url)
        self._own_client = client is None
        self._append = self.client.register_script(APPEND)
        self._snapshot = self.client.register_script(SNAPSHOT)
        self._load = self.client.register_script(LOAD)
        self._acquire = self.client.register_script(ACQUIRE)
        self._erase = self.client.register_script(ERASE)

    def key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    async def _call(self, coro):
        try:
            return await coro
        except _ERRORS as exc:
            raise unavailable(self.name, exc) from exc

    async def start(self) -> None:
        await self._call(self.client.ping())

    async def close(self) -> None:
        if self._own_client:
            await self.client.aclose()

    async def drop(self) -> None:
        """Delete every key under this prefix (test cleanup); also the tiered cache's keys."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + "*"
        batch = []
        async for k in self.client.scan_iter(match=pattern, count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                await self._call(self.client.unlink(*batch))
                batch.clear()
        if batch:
            await self._call(self.client.unlink(*batch))

    leases = False          # never the acknowledging store: no host leases, no membership view here

    async def acquire(self, key: str, holder: str | None = None) -> int:
        if holder is not None:
            raise SyncopateError(ErrorCode.INTERNAL, "the redis store keeps no leases: use PostgreSQL or tiered")
        return int(await self._call(self._acquire(keys=[self.key("o", key), f"{self.prefix}epoch_floor"])))

    async def load(self, key: str) -> Loaded:
        seq, data, members = await self._call(self._load(keys=[self.key("s", key), self.key("r", key)]))
        snap = Snapshot(int(seq), bytes(data)) if seq is not None else None
        return Loaded(snap, [Record(int.from_bytes(m[:8], "big"), bytes(m[8:])) for m in members])

    async def append(self, batch: list[Append]) -> list:
        if not batch:
            return []
        keys: list[str] = []
        args: list = []
        for item in batch:
            keys += [self.key("o", item.key), self.key("r", item.key), self.key("s", item.key)]
            args += [item.epoch, len(item.records)]
            for r in item.records:
                args += [r.seq, r.seq.to_bytes(8, "big") + r.data]
        out = await self._call(self._append(keys=keys, args=args))
        return [None if cur == -1 else stale(item.key, item.epoch, cur or None) for item, cur in zip(batch, out)]

    async def write_snapshot(self, key: str, epoch: int, snapshot: Snapshot) -> None:
        cur = await self._call(self._snapshot(
            keys=[self.key("o", key), self.key("s", key), self.key("r", key)],
            args=[epoch, snapshot.seq, snapshot.data]))
        if cur != -1:
            raise stale(key, epoch, cur or None)

    async def erase(self, key: str, epoch: int) -> bool:
        cur = await self._call(self._erase(keys=[self.key("o", key), self.key("s", key), self.key("r", key),
                                                 f"{self.prefix}epoch_floor"], args=[epoch]))
        if cur == 0:
            return False
        if cur != -1:
            raise stale(key, epoch, cur)
        return True

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except _ERRORS:
            return False
