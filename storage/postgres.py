"""PostgreSQL (asyncpg): the durable store for a cluster (`serve --postgres-dsn`).

Tables carry a prefix (default `syncopate_`) so several deployments, or every test, can share one
database: `{p}meta` (schema version), `{p}owners` (key -> epoch), `{p}records` (the log, primary key
(key, seq)) and `{p}snapshots` (one per key). `start()` creates or upgrades the schema under an
advisory lock, so hosts starting together don't race on CREATE TABLE.

Every write is ONE statement, hence one round trip and one implicit transaction:

* append: a data-modifying CTE locks the batch's owner rows `FOR SHARE`, inserts the records of
  every item whose epoch equals the locked row's epoch (one INSERT ... SELECT FROM unnest(arrays)),
  and returns the current epochs so each refused item gets its own STALE_EPOCH. In READ COMMITTED,
  a row lock that waited for a concurrent acquire() re-reads the newest row version, so the check
  always sees the latest committed epoch, never the statement's snapshot. FOR SHARE locks don't
  conflict with each other (appends on one key never serialize on the owner row, no deadlock
  between batches with overlapping keys), but they do block acquire()'s UPDATE: once acquire()
  has committed, every append under an older epoch has either committed before it or is refused.
  Rejected: BEGIN / SELECT ... FOR SHARE / INSERT / COMMIT as four statements (four round trips
  for the same locks), and executemany() of single-row INSERTs (one round trip per record).
* acquire: `INSERT .. ON CONFLICT DO UPDATE SET epoch = epoch + 1 RETURNING epoch`, with a normal
  synchronous commit. Rejected: `synchronous_commit = off` for acquire. The tempting argument is
  that a later synchronous append flushes the WAL up to (and past) the acquire, and that a lost
  acquire merely leaves the old epoch current, so the new owner's writes get refused. That part
  holds, but the lost increment is then handed out AGAIN: after the crash the next acquire()
  returns the same epoch number that the first new owner still holds in memory, and two hosts
  write under one fencing token. Fencing needs every epoch ever returned to be durable. On this
  machine the fsync costs ~0.1 ms of a 0.25 ms acquire (measured), so there is nothing to win.
* write_snapshot: epoch check `FOR SHARE`, upsert the snapshot only if it is newer, delete the
  records it covers; one statement.

load() is one statement too (snapshot row UNION ALL the tail), so it reads one MVCC snapshot.
Connection and server errors map to STORE_UNAVAILABLE. A duplicate (key, seq) fails the whole
batch (nothing committed) and is reported as STORE_UNAVAILABLE as well, like the SQLite backend.
If the caller is cancelled while a statement is in flight the outcome of that commit is unknown
(asyncpg resets the connection); callers must treat it like STORE_UNAVAILABLE: not acknowledged,
and a later activation re-reads whatever did commit.
"""
from __future__ import annotations

import asyncio
import getpass
import os
import re
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from protocols.errors import SyncopateError
from storage.base import Append, Dropped, LeaseHeld, Loaded, Membership, Record, Snapshot, Store, stale, unavailable

SCHEMA_VERSION = 2
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")

# MIGRATIONS[v] upgrades a schema at version v to v + 1; version 0 is "nothing yet".
MIGRATIONS = {
    0: [
        "CREATE TABLE IF NOT EXISTS {p}owners (key text PRIMARY KEY, epoch bigint NOT NULL)",
        ("CREATE TABLE IF NOT EXISTS {p}records (key text NOT NULL, seq bigint NOT NULL,"
         " epoch bigint NOT NULL, data bytea NOT NULL, PRIMARY KEY (key, seq))"),
        ("CREATE TABLE IF NOT EXISTS {p}snapshots (key text PRIMARY KEY, seq bigint NOT NULL,"
         " epoch bigint NOT NULL, data bytea NOT NULL)"),
    ],
    # host leases (read fencing) and the membership view
    1: [
        "ALTER TABLE {p}owners ADD COLUMN IF NOT EXISTS holder text",
        "CREATE TABLE IF NOT EXISTS {p}leases (holder text PRIMARY KEY, until timestamptz NOT NULL, revoked boolean NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {p}membership (name text PRIMARY KEY, epoch bigint NOT NULL, members text NOT NULL)",
    ],
}

SQL = {
    # a key with no owners row starts above the epoch floor (erase(): storage.base)
    "acquire": "INSERT INTO {p}owners (key, epoch) VALUES ($1, 1 + coalesce((SELECT v::bigint FROM {p}meta"
               " WHERE k = 'epoch_floor'), 0)) ON CONFLICT (key)"
               " DO UPDATE SET epoch = {p}owners.epoch + 1, holder = NULL RETURNING epoch",
    # Leased acquire, in one transaction: lock the owners row (created if missing; an epoch-0 row
    # never commits alone; a new key's starts at the epoch floor, so it is taken at floor + 1), then
    # the current holder's lease row FOR SHARE, so a renewal in flight finishes first and the expiry
    # compared is the newest one; then take it.
    "lock_owner": "INSERT INTO {p}owners (key, epoch) VALUES ($1, coalesce((SELECT v::bigint FROM {p}meta"
                  " WHERE k = 'epoch_floor'), 0)) ON CONFLICT (key)"
                  " DO UPDATE SET epoch = {p}owners.epoch RETURNING holder",
    "lease_live": "SELECT until > clock_timestamp() FROM {p}leases WHERE holder = $1 FOR SHARE",
    "take": "UPDATE {p}owners SET epoch = epoch + 1, holder = $2 WHERE key = $1 RETURNING epoch",
    "release": "UPDATE {p}owners SET holder = NULL WHERE key = $1 AND epoch = $2 AND holder = $3",
    "open_lease": "INSERT INTO {p}leases (holder, until, revoked)"
                  " VALUES ($1, clock_timestamp() + make_interval(secs => $2::float8), false)"
                  " ON CONFLICT (holder) DO UPDATE SET until = excluded.until WHERE NOT {p}leases.revoked",
    # an UPDATE waits for an acquire's FOR SHARE and re-checks the expiry on the newest row
    "renew_lease": "UPDATE {p}leases SET until = clock_timestamp() + make_interval(secs => $2::float8)"
                   " WHERE holder = $1 AND NOT revoked AND until > clock_timestamp()",
    "revoke_lease": "UPDATE {p}leases SET revoked = true WHERE holder = $1",
    # the row, or else the floor the sweep that deleted it left (storage.base), in one snapshot
    "membership": "SELECT coalesce(m.epoch, f.floor), coalesce(m.members, '[]') FROM (SELECT coalesce("
                  "(SELECT v::bigint FROM {p}meta WHERE k = 'view_floor'), 0) AS floor) f"
                  " LEFT JOIN {p}membership m ON m.name = $1",
    # drop_dead(): one sweeper at a time (the others, and a sweep while a view is being created at
    # the floor, "no_sweep" below, skip this round: no lock order to deadlock on),
    # lease rows run out for longer than the bound, then the views left with no member's lease row
    # (locked: a compare-and-set on one waits, then finds it gone)
    "sweeper": "SELECT pg_try_advisory_xact_lock(hashtext('{p}drop_dead'))",
    "drop_leases": "DELETE FROM {p}leases WHERE until < clock_timestamp() - make_interval(secs => $1::float8)",
    "views_locked": "SELECT name, epoch, members FROM {p}membership ORDER BY name FOR UPDATE",
    "leases_kept": "SELECT holder FROM {p}leases WHERE holder = ANY($1::text[])",
    "drop_views": "DELETE FROM {p}membership WHERE name = ANY($1::text[])",
    "raise_view_floor": "INSERT INTO {p}meta (k, v) VALUES ('view_floor', $1::text)"
                        " ON CONFLICT (k) DO UPDATE SET v = greatest({p}meta.v::bigint, excluded.v::bigint)::text",
    # A view with no row is created iff the caller expected the floor; under the sweeper's lock,
    # shared, so no sweep deletes a row or raises the floor between this check and the commit.
    "no_sweep": "SELECT pg_advisory_xact_lock_shared(hashtext('{p}drop_dead'))",
    "membership_new": "INSERT INTO {p}membership (name, epoch, members) SELECT $1, $2::bigint + 1, $3"
                      " WHERE $2::bigint = coalesce((SELECT v::bigint FROM {p}meta WHERE k = 'view_floor'), 0)"
                      " ON CONFLICT (name) DO NOTHING RETURNING epoch",
    "membership_cas": "UPDATE {p}membership SET epoch = epoch + 1, members = $3 WHERE name = $1 AND epoch = $2"
                      " RETURNING epoch",
    "last_seq": "SELECT coalesce(greatest((SELECT max(seq) FROM {p}records WHERE key = $1),"
                " (SELECT seq FROM {p}snapshots WHERE key = $1)), -1)",
    "load": "WITH s AS (SELECT seq, data FROM {p}snapshots WHERE key = $1)"
            " SELECT true AS snap, seq, data FROM s"
            " UNION ALL"
            " SELECT false, r.seq, r.data FROM {p}records r"
            "  WHERE r.key = $1 AND r.seq > coalesce((SELECT seq FROM s), 0)"
            " ORDER BY 1 DESC, 2",
    "append": "WITH own AS MATERIALIZED ("
              "  SELECT key, epoch FROM {p}owners WHERE key = ANY($5::text[]) FOR SHARE),"
              " ins AS ("
              "  INSERT INTO {p}records (key, seq, epoch, data)"
              "  SELECT r.key, r.seq, r.epoch, r.data"
              "  FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[]) AS r(key, seq, epoch, data)"
              "  JOIN own ON own.key = r.key AND own.epoch = r.epoch)"
              " SELECT key, epoch FROM own",
    "snapshot": "WITH own AS MATERIALIZED ("
                "  SELECT epoch FROM {p}owners WHERE key = $1 FOR SHARE),"
                " up AS ("
                "  INSERT INTO {p}snapshots (key, seq, epoch, data)"
                "  SELECT $1, $2, $3, $4 FROM own WHERE own.epoch = $3"
                "  ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, epoch = excluded.epoch, data = excluded.data"
                "  WHERE excluded.seq > {p}snapshots.seq),"
                # Also fine when the snapshot is ignored as older: the stored one covers these records too.
                " del AS (DELETE FROM {p}records WHERE key = $1 AND seq <= $2"
                "  AND EXISTS (SELECT 1 FROM own WHERE own.epoch = $3))"
                " SELECT epoch FROM own",
    # One statement: lock the owners row, delete everything of the key if the epoch is the owner's,
    # raise the floor; answers the current epoch (NULL: no owners row, nothing stored).
    "erase": "WITH own AS MATERIALIZED (SELECT epoch FROM {p}owners WHERE key = $1 FOR UPDATE),"
             " r AS (DELETE FROM {p}records WHERE key = $1 AND EXISTS (SELECT 1 FROM own WHERE epoch = $2)),"
             " s AS (DELETE FROM {p}snapshots WHERE key = $1 AND EXISTS (SELECT 1 FROM own WHERE epoch = $2)),"
             " o AS (DELETE FROM {p}owners WHERE key = $1 AND epoch = $2 AND EXISTS (SELECT 1 FROM own)),"
             " f AS (INSERT INTO {p}meta (k, v) SELECT 'epoch_floor', $2::text FROM own WHERE epoch = $2"
             "  ON CONFLICT (k) DO UPDATE SET v = greatest({p}meta.v::bigint, excluded.v::bigint)::text)"
             " SELECT epoch FROM own",
}


def pgpass_password(dsn: str) -> str | None:
    """The password asyncpg would find for `dsn`, looked up once (call it on a thread).

    Without a password in the DSN or PGPASSWORD, asyncpg stats and reads ~/.pgpass on EVERY new
    connection, inside the event loop (the suite's blockbuster check catches it). Handing it the
    result ("" when no entry matches) skips that. None = leave it to asyncpg: a DSN that already
    has a password, or one whose query overrides host/user/dbname/passfile/service."""
    u = urlsplit(dsn)
    try:
        port = u.port
    except ValueError:
        return None
    if u.password is not None or os.getenv("PGPASSWORD") is not None:
        return None
    if set(parse_qs(u.query)) & {"host", "port", "user", "dbname", "database", "passfile", "service"}:
        return None
    want = (u.hostname or os.getenv("PGHOST") or "localhost", str(port or os.getenv("PGPORT") or 5432))
    user = unquote(u.username or "") or os.getenv("PGUSER") or getpass.getuser()
    want += (unquote(u.path.lstrip("/")) or os.getenv("PGDATABASE") or user, user)
    try:
        with open(os.getenv("PGPASSFILE") or os.path.expanduser("~/.pgpass")) as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = [x.replace("\\:", ":").replace("\\\\", "\\") for x in re.split(r"(?<!\\):", line, maxsplit=4)]
        if len(fields) == 5 and not line.startswith("#") and all(f in ("*", w) for f, w in zip(fields, want)):
            return fields[4]
    return ""


def loopback_without_sslmode(dsn: str) -> bool:
    """True for a DSN to this machine that leaves sslmode to the default (prefer). TLS over
    loopback protects nothing, and asyncpg's prefer mode builds an SSL context from the files in
    ~/.postgresql on every new connection, inside the event loop. Elsewhere the DSN decides."""
    u = urlsplit(dsn)
    query = parse_qs(u.query)
    if "sslmode" in query or "ssl" in query or os.getenv("PGSSLMODE") or "host" in query:
        return False
    return (u.hostname or os.getenv("PGHOST") or "localhost") in ("localhost", "127.0.0.1", "::1")


_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.ClientConfigurationError)


class PostgresStore(Store):
    name = "postgres"
    durable = True

    def __init__(self, dsn: str, prefix: str = "syncopate_", *, min_size: int = 1, max_size: int = 8,
                 timeout: float = 10.0) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"table prefix {prefix!r} must match {_PREFIX.pattern}")
        self.dsn = dsn
        self.prefix = prefix
        self._pool_args = {"min_size": min_size, "max_size": max_size, "command_timeout": timeout, "timeout": timeout}
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._sql = {k: v.format(p=prefix) for k, v in SQL.items()}
        self.loads = 0          # observable: the tiered store's tests count PostgreSQL loads
        self.commits = 0

    @asynccontextmanager
    async def _conn(self):
        if self._pool is None:
            raise unavailable(self.name, RuntimeError("store not started"))
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _ERRORS as exc:
            if isinstance(exc, asyncpg.UniqueViolationError):
                raise unavailable(self.name, ValueError(f"duplicate (key, seq): {exc.detail or exc}")) from exc
            raise unavailable(self.name, exc) from exc

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            password = await asyncio.to_thread(pgpass_password, self.dsn)   # file I/O: off the loop
            extra = {} if password is None else {"password": password}
            if loopback_without_sslmode(self.dsn):
                extra["ssl"] = False
            self._pool = await asyncpg.create_pool(self.dsn, **self._pool_args, **extra)
        except _ERRORS as exc:
            raise unavailable(self.name, exc) from exc
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        p = self.prefix
        async with self._conn() as conn, conn.transaction():
            # Serialises concurrent start() of many hosts; released at COMMIT.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{p}schema")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {p}meta (k text PRIMARY KEY, v text NOT NULL)")
            row = await conn.fetchval(f"SELECT v FROM {p}meta WHERE k = 'schema_version'")
            version = int(row) if row is not None else 0
            if version > SCHEMA_VERSION:
                raise unavailable(self.name, RuntimeError(
                    f"schema {p}* is at version {version}, newer than this code ({SCHEMA_VERSION})"))
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v]:
                    await conn.execute(stmt.format(p=p))
            await conn.execute(f"INSERT INTO {p}meta VALUES ('schema_version', $1)"
                               " ON CONFLICT (k) DO UPDATE SET v = excluded.v", str(SCHEMA_VERSION))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _ERRORS:
                pool.terminate()

    async def drop(self) -> None:
        """Drop this prefix's tables (test cleanup)."""
        p = self.prefix
        async with self._conn() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {p}records, {p}snapshots, {p}owners, {p}leases,"
                               f" {p}membership, {p}meta")

    # -- contract ----------------------------------------------------------------------------
    async def acquire(self, key: str, holder: str | None = None) -> int:
        if holder is None:
            async with self._conn() as conn:
                return await conn.fetchval(self._sql["acquire"], key)
        async with self._conn() as conn, conn.transaction():
            cur = await conn.fetchval(self._sql["lock_owner"], key)
            if cur is not None and cur != holder and await conn.fetchval(self._sql["lease_live"], cur):
                raise LeaseHeld(key, cur)          # rolls back: nothing changed
            return await conn.fetchval(self._sql["take"], key, holder)

    async def _exec(self, name: str, *args) -> int:
        async with self._conn() as conn:
            status = await conn.execute(self._sql[name], *args)
        return int(status.rsplit(" ", 1)[-1])            # rows changed ("UPDATE 1", "INSERT 0 1")

    async def release(self, key: str, epoch: int, holder: str) -> bool:
        return await self._exec("release", key, epoch, holder) == 1

    async def open_lease(self, holder: str, lease_s: float) -> bool:
        return await self._exec("open_lease", holder, float(lease_s)) == 1

    async def renew_lease(self, holder: str, lease_s: float) -> bool:
        return await self._exec("renew_lease", holder, float(lease_s)) == 1

    async def revoke_lease(self, holder: str) -> None:
        await self._exec("revoke_lease", holder)

    async def membership(self, name: str) -> Membership:
        async with self._conn() as conn:
            row = await conn.fetchrow(self._sql["membership"], name)
        return Membership.from_row(row[0], row[1]) if row else Membership()

    async def drop_dead(self, older_than_s: float) -> Dropped:
        async with self._conn() as conn, conn.transaction():
            if not await conn.fetchval(self._sql["sweeper"]):
                return Dropped()                 # another host is sweeping right now
            status = await conn.execute(self._sql["drop_leases"], float(older_than_s))
            rows = await conn.fetch(self._sql["views_locked"])
            views = {name: set(Membership.from_row(0, members).members.values()) for name, _, members in rows}
            held = sorted(set().union(*views.values()))
            kept = {r[0] for r in await conn.fetch(self._sql["leases_kept"], held)} if held else set()
            dead = [name for name, holders in views.items() if holders and not holders & kept]
            if dead:
                await conn.execute(self._sql["drop_views"], dead)
                # a re-created view starts above every swept one (storage.base)
                floor = 1 + max(epoch for name, epoch, _ in rows if name in dead)
                await conn.execute(self._sql["raise_view_floor"], str(floor))
        return Dropped(int(status.rsplit(" ", 1)[-1]), len(dead))

    async def change_membership(self, name: str, expected_epoch: int, members: dict[int, str]) -> Membership | None:
        text = Membership(0, members).to_json()
        async with self._conn() as conn, conn.transaction():
            epoch = await conn.fetchval(self._sql["membership_cas"], name, expected_epoch, text)
            if epoch is None:                    # no row at that epoch: maybe no row at all
                await conn.execute(self._sql["no_sweep"])
                epoch = await conn.fetchval(self._sql["membership_new"], name, expected_epoch, text)
        return None if epoch is None else Membership.from_row(epoch, text)

    async def last_seq(self, key: str) -> int:
        """The last committed seq of `key` (records or snapshot; -1: nothing stored). An index
        lookup: the tiered store checks its cached copy against it on every load."""
        async with self._conn() as conn:
            return await conn.fetchval(self._sql["last_seq"], key)

    async def load(self, key: str) -> Loaded:
        async with self._conn() as conn:
            rows = await conn.fetch(self._sql["load"], key)
        self.loads += 1
        snap = None
        if rows and rows[0][0]:
            snap = Snapshot(rows[0][1], bytes(rows[0][2]))
            rows = rows[1:]
        return Loaded(snap, [Record(r[1], bytes(r[2])) for r in rows])

    async def append(self, batch: list[Append]) -> list:
        if not batch:
            return []
        keys, seqs, epochs, datas = [], [], [], []
        for item in batch:
            for r in item.records:
                keys.append(item.key)
                seqs.append(r.seq)
                epochs.append(item.epoch)
                datas.append(r.data)
        owners = list({item.key for item in batch})
        async with self._conn() as conn:
            rows = await conn.fetch(self._sql["append"], keys, seqs, epochs, datas, owners)
        self.commits += 1
        current = {r[0]: r[1] for r in rows}
        return [None if current.get(i.key) == i.epoch else stale(i.key, i.epoch, current.get(i.key))
                for i in batch]

    async def write_snapshot(self, key: str, epoch: int, snapshot: Snapshot) -> None:
        async with self._conn() as conn:
            cur = await conn.fetchval(self._sql["snapshot"], key, snapshot.seq, epoch, snapshot.data)
        if cur != epoch:
            raise stale(key, epoch, cur)

    async def erase(self, key: str, epoch: int) -> bool:
        async with self._conn() as conn:
            cur = await conn.fetchval(self._sql["erase"], key, epoch)
        if cur is None:
            return False
        if cur != epoch:
            raise stale(key, epoch, cur)
        return True

    async def ping(self) -> bool:
        try:
            async with self._conn() as conn:
                return await conn.fetchval("SELECT 1") == 1
        except SyncopateError:
            return False
