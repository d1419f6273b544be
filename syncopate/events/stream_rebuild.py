"""Taking entries out of a Redis stream for good (the erasure of a user: syncopate/events/erasure.py).

XDEL and XTRIM do not remove an entry's bytes: a stream is a radix tree of listpack nodes (up to
`stream-node-max-entries`, 100 by default, each), and a deleted entry is only *flagged* in its node,
whose bytes stay in memory, in DUMP and in every RDB/AOF rewrite until every entry of the node is
deleted (checked on Redis 7.0: `XDEL` then `DUMP` still holds the value). So the erasure rebuilds
the stream instead, in one Lua script (atomic: no XADD or XREADGROUP runs in between):

  1. refuse (BUSY) while the group still has an entry up to the watermark pending or undelivered;
  2. copy every entry after the watermark, with its id, into a new key;
  3. give the new key the stream's counters (last id, entries added, max deleted id) and every
     group with its last delivered id, entries read, and pending entries (consumer, idle time,
     delivery count: XCLAIM ... FORCE), so delivery goes on exactly where it was;
  4. RENAME it over the stream: the old stream and all of its nodes are freed.

Every entry up to the watermark leaves the stream, the erased user's and the others'. Those were all
acknowledged (step 1), so their record is the counts store; the stream keeps what is yet to be
consumed. A consumer blocked in XREADGROUP on the stream may be answered an error by the RENAME; it
retries (syncopate/events/consumer.py).
"""
from __future__ import annotations

REBUILD = r"""
local s, tmp, w, grp = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
if redis.call('EXISTS', s) == 0 then return 0 end
local function field(arr, name)
  for i = 1, #arr, 2 do if arr[i] == name then return arr[i + 1] end end
  return nil
end
local function id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local info = redis.call('XINFO', 'STREAM', s)
local groups = redis.call('XINFO', 'GROUPS', s)
local found = false
for _, g in ipairs(groups) do
  if field(g, 'name') == grp then
    found = true
    if id_lt(field(g, 'last-delivered-id'), w) then return redis.error_reply('BUSY not delivered up to the watermark') end
    if #redis.call('XPENDING', s, grp, '-', w, 1) > 0 then return redis.error_reply('BUSY pending up to the watermark') end
  end
end
if not found then return redis.error_reply('NOGROUP no group ' .. grp) end
local len = tonumber(field(info, 'length'))
redis.call('DEL', tmp)
local keep = redis.call('XRANGE', s, '(' .. w, '+')
for _, e in ipairs(keep) do redis.call('XADD', tmp, e[1], unpack(e[2])) end
local last = field(info, 'last-generated-id')
local maxdel = field(info, 'max-deleted-entry-id')
if id_lt(maxdel, w) then maxdel = w end
for _, g in ipairs(groups) do
  local name = field(g, 'name')
  local read = field(g, 'entries-read')
  if read then
    redis.call('XGROUP', 'CREATE', tmp, name, field(g, 'last-delivered-id'), 'MKSTREAM', 'ENTRIESREAD', read)
  else
    redis.call('XGROUP', 'CREATE', tmp, name, field(g, 'last-delivered-id'), 'MKSTREAM')
  end
  if #keep > 0 then
    for _, p in ipairs(redis.call('XPENDING', s, name, '(' .. w, '+', #keep)) do
      redis.call('XCLAIM', tmp, name, p[2], 0, p[1], 'IDLE', p[3], 'RETRYCOUNT', p[4], 'FORCE', 'JUSTID')
    end
  end
end
redis.call('XSETID', tmp, last, 'ENTRIESADDED', field(info, 'entries-added'), 'MAXDELETEDID', maxdel)
redis.call('RENAME', tmp, s)
return len - #keep
"""
