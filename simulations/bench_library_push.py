"""Library push benchmark: N users x 2 websocket connections; each user likes or unlikes a track
every P seconds from one connection ("phone"); measured: change -> push received on the user's
other connection ("laptop"), and the server's memory per active session and per idle passivated
user.

    .venv/bin/python -m simulations.bench_library_push [--users 10000] [--conns 2] [--period 10]
        [--seconds 30] [--hosts 2] [--gateways 2] [--url URL[,URL2] --secret-file F]

Without --url it starts its own RayServer (SQLite in a temporary data dir, --gateways gateways on
their own ports; the phone connects to the first gateway and the laptop to the next one, so the
push crosses gateways). With --url (comma-separated gateway URLs) it drives that server; --secret-file
is the file of its signing secret.

What is measured
- push latency: perf_counter when the phone sends `library.save`/`library.remove` -> arrival of
  the matching `library.changed` on the laptop, both sockets in the same load-generator process
  (one clock). It includes the request path, the host's group commit (SQLite fsync) and both hops.
  Also the phone's ack latency, lost pushes (an acknowledged change whose push never came) and
  errors.
- harness event-loop lag (p99/max of a 50 ms timer's overshoot): the load generator shares the
  2 cores with the server, so its own lag is part of every latency it measures; it is reported so
  the numbers can be read honestly.
- server processes' RSS (psutil; own RayServer: its host and gateway actors): at start, with every
  connection open, at the end of the run, and after passivation. Per active session = the hosts'
  growth / users; per connection = the gateways' growth / connections.
- passivated user: the session snapshots the hosts actually wrote to SQLite after every connection
  closed and the entities passivated (--idle-timeout), bytes per user; plus, in this process, the
  session entity model (as simulations/bench_library.py measures it): tracemalloc of an active
  session with 2 connections and the run's changes, and its snapshot as the host stores it.

One process can hold at most RLIMIT_NOFILE sockets (here a hard limit of 20,000 that can't be
raised), so the connections are spread over worker processes of at most --per-worker sockets each
(both connections of a user in the same worker). Connection setup is concurrent but bounded
(--concurrency per worker).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from simulations.resources import cpu_seconds

RETRY_CODES = {"HOST_UNAVAILABLE", "STALE_EPOCH", "NOT_OWNER", "STORE_UNAVAILABLE", "TIMEOUT", "RATE_LIMITED"}


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def ws_url(url: str) -> str:
    return "ws" + url[len("http"):] if url.startswith("http") else url


# ==================================================================================================
# worker: a slice of the users, in its own process and event loop
# ==================================================================================================

class User:
    __slots__ = ("a", "acked", "b", "liked", "op", "pushed", "rid", "t_send", "uid", "uri")

    def __init__(self, uid: str, uri: str) -> None:
        self.uid, self.uri = uid, uri
        self.liked = False
        self.op: str | None = None
        self.t_send: float | None = None
        self.pushed = True
        self.acked = True
        self.a = self.b = None
        self.rid = 0


class Worker:
    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.lat: list[float] = []
        self.lat_at: list[float] = []        # when each measured change was sent (s since the start)
        self.lat_abs: list[float] = []       # the same, as perf_counter (CLOCK_MONOTONIC: the stall recorder's clock)
        self.t0 = 0.0
        self.ack: list[float] = []
        self.connect_ms: list[float] = []
        self.errors: Counter = Counter()
        self.lost = 0
        self.sent = 0
        self.lag: list[float] = []
        self.users: list[User] = []
        self.ready: dict[int, asyncio.Future] = {}
        self.closed_early = 0
        self.running = False

    # -- connections -------------------------------------------------------------------------------
    async def open(self, http, url: str, token: str, user: User, role: str):
        import aiohttp
        import orjson
        t0 = time.perf_counter()
        ws = await http.ws_connect(f"{ws_url(url)}/v1/ws?token={token}", max_msg_size=0, autoping=True,
                                   heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        loop = asyncio.get_running_loop()
        hello = loop.create_future()
        ready = loop.create_future()

        async def read():
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    now = time.perf_counter()
                    f = orjson.loads(msg.data)
                    t = f.get("type")
                    if t == "library.changed":
                        if role == "b":
                            self.on_push(user, f, now)
                    elif t in ("result", "error"):
                        rid = f.get("id")
                        if rid == "ready" and not ready.done():
                            ready.set_result(f)
                        elif role == "a" and rid == user.rid:
                            self.on_answer(user, f, now)
                    elif t == "hello" and not hello.done():
                        hello.set_result(f)
            except Exception as exc:  # noqa: BLE001 - a dropped socket ends the reader
                self.errors[f"reader:{type(exc).__name__}"] += 1
            if self.running:
                self.closed_early += 1
            for fut in (hello, ready):
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))
                    fut.exception()               # mark retrieved: nobody may be waiting any more

        task = loop.create_task(read())
        await asyncio.wait_for(hello, 30)
        # One round trip to the session: the automatic subscription was requested before it on
        # the same ordered channel, so from this answer on every push reaches the socket.
        await ws.send_str('{"id": "ready", "type": "session.list"}')
        await asyncio.wait_for(ready, 30)
        self.connect_ms.append((time.perf_counter() - t0) * 1000)
        return ws, task

    async def connect_all(self, http) -> None:
        from gateway.auth import Auth
        auth = Auth(self.conf["secret"])
        urls = self.conf["urls"]
        sem = asyncio.Semaphore(self.conf["concurrency"])
        ttl = int(self.conf["seconds"] + 3600)

        async def one(k: int, u: User):
            async with sem:
                try:
                    u.a = await self.open(http, urls[0], auth.mint(u.uid, device_id="phone", ttl_s=ttl), u, "a")
                    if self.conf["conns"] > 1:
                        u.b = await self.open(http, urls[1 % len(urls)],
                                              auth.mint(u.uid, device_id="laptop", ttl_s=ttl), u, "b")
                except Exception as exc:  # noqa: BLE001
                    self.errors[f"connect:{type(exc).__name__}"] += 1

        await asyncio.gather(*(one(k, u) for k, u in enumerate(self.users)))

    # -- the load --------------------------------------------------------------------------------
    def on_push(self, u: User, f: dict, now: float) -> None:
        ch = (f.get("payload") or {}).get("changes") or [{}]
        if u.t_send is not None and not u.pushed and ch[0].get("op") == u.op and ch[0].get("uri") == u.uri:
            u.pushed = True
            self.lat.append((now - u.t_send) * 1000)
            self.lat_at.append(u.t_send - self.t0)
            self.lat_abs.append(u.t_send)

    def on_answer(self, u: User, f: dict, now: float) -> None:
        u.acked = True
        if f["type"] == "result":
            self.ack.append((now - u.t_send) * 1000)
            u.liked = u.op == "save"
        else:
            code = (f.get("error") or {}).get("code", "?")
            self.errors[code] += 1
            u.pushed = True                   # refused: no push is due

    async def fire(self, u: User) -> None:
        if u.a is None or u.a[0].closed:
            return
        if not u.acked:
            self.errors["no_answer_within_period"] += 1
        elif not u.pushed:
            self.lost += 1                    # acknowledged, never pushed within a period
        u.op = "remove" if u.liked else "save"
        u.rid += 1
        u.pushed = u.b is None
        u.acked = False
        frame = (f'{{"id": {u.rid}, "type": "library.{u.op}", "payload": {{"uris": ["{u.uri}"]}}, '
                 f'"op_id": "{u.uid}-{u.rid}"}}')
        u.t_send = time.perf_counter()
        self.sent += 1
        try:
            await u.a[0].send_str(frame)
        except Exception as exc:  # noqa: BLE001
            self.errors[f"send:{type(exc).__name__}"] += 1
            u.pushed = u.acked = True

    async def monitor_lag(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.05)
            self.lag.append((time.perf_counter() - t - 0.05) * 1000)

    async def run_load(self, start_wall: float) -> None:
        loop = asyncio.get_running_loop()
        period, seconds = self.conf["period"], self.conf["seconds"]
        rng = random.Random(self.conf["seed"])
        # the wall-clock start shared by every worker, on this loop's clock
        t0 = loop.time() + max(0.0, start_wall - time.time())
        end = t0 + seconds
        self.t0 = time.perf_counter() + (t0 - loop.time())
        self.running = True
        tasks: set = set()

        def tick(u: User, at: float) -> None:
            t = loop.create_task(self.fire(u))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            nxt = at + period
            if nxt < end:
                loop.call_at(nxt, tick, u, nxt)

        for u in self.users:
            at = t0 + rng.uniform(0, period)
            if at < end:
                loop.call_at(at, tick, u, at)
        stop = asyncio.Event()
        lag = loop.create_task(self.monitor_lag(stop))
        await asyncio.sleep(max(0.0, end - loop.time()))
        # grace for the last changes' pushes
        deadline = loop.time() + 5.0
        while loop.time() < deadline and any(not u.pushed or not u.acked for u in self.users):
            await asyncio.sleep(0.05)
        self.lost += sum(1 for u in self.users if not u.pushed and u.acked)
        self.errors["no_answer"] += sum(1 for u in self.users if not u.acked)
        self.running = False
        stop.set()
        await lag

    async def close_all(self) -> None:
        sem = asyncio.Semaphore(self.conf["concurrency"])

        async def close(c):
            if c is None:
                return
            async with sem:
                try:
                    await asyncio.wait_for(c[0].close(), 10)
                except Exception as exc:  # noqa: BLE001 - closing at the end: count, don't fail
                    self.errors[f"close:{type(exc).__name__}"] += 1
                c[1].cancel()

        await asyncio.gather(*(close(c) for u in self.users for c in (u.a, u.b)))

    async def main(self, pipe) -> None:
        import aiohttp
        raise_fd_limit()
        loop = asyncio.get_running_loop()
        from syncopate import stalls
        recorder = stalls.maybe_start(f"load-{self.conf['index']}")     # opt-in (--stalls)
        self.users = [User(uid, uri) for uid, uri in self.conf["users"]]
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None, connect=60))
        t = time.perf_counter()
        await self.connect_all(http)
        # The sockets are long-lived now: out of the collector's sight (gc.freeze), and no collection
        # at all while the load runs: this process's pauses are in every latency it measures.
        # Measured with --stalls (2,000 users x 2, one load process, 60 s): even with the sockets
        # frozen, 73-117 young, 13-26 middle and 1-2 full collections during the run, up to 43, 66
        # and 76 ms of CPU each. What cyclic garbage a run makes waits for the end of it.
        gc.collect()
        gc.freeze()
        opened = sum((u.a is not None) + (u.b is not None) for u in self.users)
        pipe.send(("connected", {"sockets": opened, "seconds": time.perf_counter() - t,
                                 "errors": dict(self.errors)}))
        msg = await loop.run_in_executor(None, pipe.recv)
        if msg[0] == "go":
            gc.disable()
            try:
                await self.run_load(msg[1])
            finally:
                gc.enable()
            pipe.send(("done", {"lat_ms": self.lat, "lat_at": self.lat_at, "lat_abs": self.lat_abs, "ack_ms": self.ack, "sent": self.sent, "lost": self.lost,
                                "errors": dict(self.errors), "lag_ms": self.lag, "closed_early": self.closed_early,
                                "connect_ms": self.connect_ms}))
            msg = await loop.run_in_executor(None, pipe.recv)
        await self.close_all()
        await http.close()
        if recorder is not None:
            recorder.stop()
            await loop.run_in_executor(None, recorder.join)
        pipe.send(("closed", None))


def worker_entry(conf: dict, pipe) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(Worker(conf).main(pipe))


# ==================================================================================================
# server-side measurements
# ==================================================================================================

def server_pids(server, urls: list[str]) -> dict[str, int]:
    from simulations.resources import listening_pids, ray_server_pids
    if server is not None:
        return ray_server_pids(server)
    out: dict[str, int] = {}
    for u in urls:
        out.update(listening_pids(int(u.rsplit(":", 1)[1].split("/")[0])))
    return out


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    import psutil
    out = {}
    for label, pid in sorted(pids.items()):
        try:
            out[label] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
    return out


def group(rss: dict[str, float], kind: str) -> float:
    return round(sum(v for k, v in rss.items() if k.startswith(kind)), 1)


def precreate_sqlite(data_dir: str) -> None:
    """Create the SQLite database (WAL mode, schema) before the hosts start: several host
    processes opening a fresh file at once can race on `PRAGMA journal_mode=WAL` and one fails
    with "database is locked" (storage/sqlite.py; reported)."""
    from storage.sqlite import SQLiteStore
    store = SQLiteStore(Path(data_dir) / "syncopate.db")
    store._open()
    store._db.close()
    store._pool.shutdown()


def host_active(server) -> int:
    import ray
    return sum(s["active"] for s in ray.get([h.stats.remote() for h in server.hosts.values()], timeout=30))


def stored_sessions(data_dir: str, prefix: str) -> dict:
    """What the store holds for the benchmark's users: snapshots and remaining log records."""
    db = sqlite3.connect(f"file:{Path(data_dir) / 'syncopate.db'}?mode=ro", uri=True, timeout=30)
    try:
        like = f"session:{prefix}%"
        n, snap = db.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM snapshots WHERE key LIKE ?",
                             (like,)).fetchone()
        nr, rec = db.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM records WHERE key LIKE ?",
                             (like,)).fetchone()
    finally:
        db.close()
    return {"snapshots": n, "snapshot_bytes": snap, "records": nr, "record_bytes": rec}


def entity_model(changes: int) -> dict:
    """The session entity of one benchmark user, in this process (as simulations/bench_library.py):
    active = tracemalloc of the entity with 2 connections and `changes` toggles of one track, plus
    the host's remembered op ids; passivated = its snapshot as the host stores it."""
    import msgpack

    from actors.entity import SYSTEM, Command, Env, Principal
    from actors.session import SessionEntity
    from catalog import Catalog

    cat = Catalog.generated()
    uri = f"spotify:track:{cat.track_ids[0]}"
    user = "bench-user-000001"
    p = Principal(user, device_id="phone")
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    e = SessionEntity(user, Env(catalog=cat))
    ops = {}
    now = 1_700_000_000_000

    def run(op, args, principal, op_id=None):
        nonlocal now
        now += 1000
        out = e.handle(Command("session", user, op, args, principal, op_id=op_id, now_ms=now))
        if out.records:
            e.version += 1
        if op_id:
            ops[op_id] = (e.version, out.reply)

    run("connect", {"conn": "g0/c1", "device_id": "phone", "client": "app", "gateway": "g0"}, SYSTEM)
    run("connect", {"conn": "g1/c1", "device_id": "laptop", "client": "app", "gateway": "g1"}, SYSTEM)
    for k in range(changes):
        run("library_save" if k % 2 == 0 else "library_remove", {"uris": [uri]}, p, op_id=f"{user}-{k + 1}")
    gc.collect()
    active = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    run("disconnect", {"conn": "g0/c1"}, SYSTEM)
    run("disconnect", {"conn": "g1/c1"}, SYSTEM)
    blob = msgpack.packb({"state": e.snapshot(), "ops": [[o, v, r] for o, (v, r) in ops.items()]},
                         use_bin_type=True)
    return {"active_entity_bytes": active, "passivated_snapshot_bytes": len(blob)}


# ==================================================================================================
# driver
# ==================================================================================================

def main() -> None:
    from simulations import tune_gc
    tune_gc()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--conns", type=int, default=2, choices=(1, 2), help="connections per user (2: measure pushes)")
    ap.add_argument("--period", type=float, default=10.0, help="seconds between a user's changes")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured run length")
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--gateways", type=int, default=2)
    ap.add_argument("--url", help="drive this server (comma-separated gateway URLs) instead of starting one")
    ap.add_argument("--secret-file", help="the file of the --url server's signing secret")
    ap.add_argument("--concurrency", type=int, default=100, help="connection setups in flight per worker")
    ap.add_argument("--per-worker", type=int, default=9000, help="sockets per load-generator process")
    ap.add_argument("--idle-timeout", type=float, default=8.0, help="own server: passivate idle entities after (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gateway-config", default="{}", help="own server: GatewayConfig overrides (JSON)")
    ap.add_argument("--dump", help="write every (sent at s, push latency ms, sent at on CLOCK_MONOTONIC) sample "
                                   "to this JSON file")
    ap.add_argument("--stalls", help="record stalls (syncopate/stalls.py) of every server and load process in "
                                     "this directory, and say which ones the slow pushes met")
    ap.add_argument("--stalls-ms", type=float, default=5.0, help="with --stalls: the smallest stall recorded")
    a = ap.parse_args()
    if a.stalls:
        # before the server and the workers start: both inherit it (process_env passes it to the actors)
        os.environ["SYNCOPATE_STALLS"] = a.stalls
        os.environ["SYNCOPATE_STALLS_MS"] = str(a.stalls_ms)
    if a.url and not a.secret_file:
        ap.error("--url needs --secret-file")

    fd_limit = raise_fd_limit()
    from catalog import Catalog
    tracks = Catalog.generated().track_ids
    run_id = f"bench{int(time.time()) % 100000}x{random.Random().randrange(1000)}"
    server, data_dir = None, None
    t_start = time.perf_counter()
    if a.url:
        from gateway.auth import read_secret
        urls, secret = [u.rstrip("/") for u in a.url.split(",")], read_secret(a.secret_file)
    else:
        from syncopate.server import RayServer, ServerSpec
        data_dir = tempfile.mkdtemp(prefix="bench-library-push-")
        precreate_sqlite(data_dir)
        spec = ServerSpec(data_dir=data_dir, port=0, hosts=a.hosts, gateways=a.gateways,
                          log_level="WARNING",
                          idle_timeout_s=a.idle_timeout,
                          gateway={"rest_rate": 10_000, "rest_burst": 10_000, **json.loads(a.gateway_config)})
        print(f"starting RayServer: {a.hosts} hosts, {a.gateways} gateways, SQLite in {data_dir}", file=sys.stderr)
        server = RayServer(spec).start()
        urls, secret = server.urls(), server.secret
    pids = server_pids(server, urls)
    rss0 = rss_mb(pids)

    # users -> workers (both connections of a user in one worker)
    users = [(f"{run_id}-{i:06d}", f"spotify:track:{tracks[i % len(tracks)]}") for i in range(a.users)]
    per_user = a.conns
    n_workers = max(1, math.ceil(a.users * per_user / a.per_worker))
    ctx = mp.get_context("spawn")
    workers = []
    for w in range(n_workers):
        conf = {"users": users[w::n_workers], "urls": urls, "secret": secret, "conns": a.conns,
                "period": a.period, "seconds": a.seconds, "concurrency": a.concurrency, "seed": a.seed + w,
                "index": w}
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_entry, args=(conf, child), daemon=True)
        proc.start()
        workers.append((proc, parent))
    print(f"{n_workers} load-generator processes connecting {a.users * a.conns:,} websockets "
          f"({a.concurrency} setups in flight each)...", file=sys.stderr)
    t = time.perf_counter()
    connected = [p.recv()[1] for _, p in workers]
    connect_s = time.perf_counter() - t
    sockets = sum(c["sockets"] for c in connected)
    print(f"{sockets:,} websockets open in {connect_s:.1f} s", file=sys.stderr)
    rss1 = rss_mb(server_pids(server, urls))

    start_wall = time.time() + 1.0
    for _, p in workers:
        p.send(("go", start_wall))
    print(f"running {a.seconds:g} s: each user changes its library every {a.period:g} s...", file=sys.stderr)
    watched = {**server_pids(server, urls), **{f"load-{i}": proc.pid for i, (proc, _) in enumerate(workers)}}
    time.sleep(max(0.0, start_wall - time.time()))
    cpu0, tc0 = cpu_seconds(watched), time.perf_counter()
    results = [p.recv()[1] for _, p in workers]
    cpu1, tc1 = cpu_seconds(watched), time.perf_counter()
    cpu_pct = {k: round((cpu1[k] - cpu0[k]) * 100 / (tc1 - tc0), 1) for k in cpu1 if k in cpu0}
    rss2 = rss_mb(server_pids(server, urls))
    for _, p in workers:
        p.send(("close",))
    for proc, p in workers:
        p.recv()
        proc.join(30)

    lat = [x for r in results for x in r["lat_ms"]]
    ack = [x for r in results for x in r["ack_ms"]]
    lag = [x for r in results for x in r["lag_ms"]]
    conn_ms = [x for r in results for x in r["connect_ms"]]
    errors: Counter = Counter()
    for c in connected:
        errors.update(c["errors"])
    for r in results:
        errors.update(r["errors"])
    sent = sum(r["sent"] for r in results)
    lost = sum(r["lost"] for r in results)
    changes_per_user = max(1, round(a.seconds / a.period))

    # passivation: every connection is closed; wait for the hosts to write and drop the sessions
    passivated, rss3, stored, passivate_s = None, None, None, None
    if server is not None:
        t = time.perf_counter()
        deadline = t + a.idle_timeout * 4 + 60
        active = host_active(server)
        while active > 0 and time.perf_counter() < deadline:
            time.sleep(1.0)
            active = host_active(server)
        passivate_s = time.perf_counter() - t
        passivated = a.users - min(a.users, active)
        rss3 = rss_mb(server_pids(server, urls))
        stored = stored_sessions(data_dir, run_id)
    model = entity_model(changes_per_user)

    split = any(k.startswith("host") for k in rss1) and any(k.startswith("gateway") for k in rss1)
    hosts_growth = group(rss1, "host") - group(rss0, "host")
    gw_growth = group(rss1, "gateway") - group(rss0, "gateway")
    all_growth = sum(rss1.values()) - sum(v for k, v in rss0.items() if k in rss1)
    report = {
        "bench": "library_push", "users": a.users, "conns_per_user": a.conns, "period_s": a.period,
        "seconds": a.seconds, "hosts": a.hosts if server else None, "gateways": len(urls),
        "store": "sqlite" if server else "given", "load_processes": n_workers, "fd_limit": fd_limit,
        "websockets_open": sockets, "connect_s": round(connect_s, 1),
        "connect_ms_p50": _r(pct(conn_ms, 0.5)), "connect_ms_p99": _r(pct(conn_ms, 0.99)),
        "changes_sent": sent, "changes_per_s": round(sent / a.seconds, 1),
        "pushes_measured": len(lat), "lost_pushes": lost, "errors": {k: v for k, v in errors.items() if v},
        "push_ms_p50": _r(pct(lat, 0.5)), "push_ms_p99": _r(pct(lat, 0.99)), "push_ms_max": _r(max(lat, default=None)),
        "ack_ms_p50": _r(pct(ack, 0.5)), "ack_ms_p99": _r(pct(ack, 0.99)),
        "harness_lag_ms_p99": _r(pct(lag, 0.99)), "harness_lag_ms_max": _r(max(lag, default=None)),
        "cpu_pct_during_run": cpu_pct, "machine_cores": os.cpu_count(),
        "server_rss_mb": {"start": rss0, "connected": rss1, "end_of_run": rss2, "after_passivation": rss3},
        "hosts_rss_growth_kb_per_active_session": _r(hosts_growth * 1024 / max(1, a.users)) if split else None,
        "gateways_rss_growth_kb_per_connection": _r(gw_growth * 1024 / max(1, sockets)) if split else None,
        "server_rss_growth_kb_per_connected_user": _r(all_growth * 1024 / max(1, a.users)),
        "passivated_users": passivated, "passivation_wait_s": _r(passivate_s),
        "stored_per_user_bytes": (_r((stored["snapshot_bytes"] + stored["record_bytes"]) / max(1, stored["snapshots"]))
                                  if stored and stored["snapshots"] else None),
        "stored": stored,
        "model_active_session_bytes": model["active_entity_bytes"],
        "model_passivated_snapshot_bytes": model["passivated_snapshot_bytes"],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump([[round(t, 4), round(x, 3), round(ab, 6)]
                       for r in results for t, x, ab in zip(r["lat_at"], r["lat_ms"], r["lat_abs"])], f)
    print(json.dumps(report, separators=(",", ":")))
    print_table(report)
    if a.stalls:
        from simulations.stall_report import explain
        samples = [(t, x) for r in results for t, x in zip(r["lat_abs"], r["lat_ms"])]
        print("\n".join(explain(samples, a.stalls, slow_ms=10.0)))

    if server is not None:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _r(x, nd: int = 2):
    return None if x is None else round(x, nd)


def print_table(r: dict) -> None:
    stored = (f"{r['stored_per_user_bytes']} B per user ({r['passivated_users']} passivated in "
              f"{r['passivation_wait_s']} s)" if r["stored_per_user_bytes"] is not None
              else "n/a (server given by --url)")
    rows = [
        ("users x connections", (f"{r['users']:,} x {r['conns_per_user']} ({r['websockets_open']:,} open, "
                                 f"{r['gateways']} gateway(s), {r['load_processes']} load process(es))")),
        ("connect (all)", f"{r['connect_s']} s; per user p50 {r['connect_ms_p50']} ms, p99 {r['connect_ms_p99']} ms"),
        ("changes", (f"{r['changes_sent']:,} in {r['seconds']:g} s ({r['changes_per_s']}/s), "
                     f"{r['pushes_measured']:,} pushes measured, {r['lost_pushes']} lost, errors {r['errors'] or 0}")),
        ("change -> push on the other connection", (f"p50 {r['push_ms_p50']} ms   p99 {r['push_ms_p99']} ms   "
                                                    f"max {r['push_ms_max']} ms")),
        ("change -> ack on the sender", f"p50 {r['ack_ms_p50']} ms   p99 {r['ack_ms_p99']} ms"),
        ("load generator loop lag", f"p99 {r['harness_lag_ms_p99']} ms   max {r['harness_lag_ms_max']} ms"),
        ("hosts RSS growth / active session", f"{r['hosts_rss_growth_kb_per_active_session']} KB"),
        ("gateways RSS growth / connection", f"{r['gateways_rss_growth_kb_per_connection']} KB"),
        ("all server RSS growth / connected user", (f"{r['server_rss_growth_kb_per_connected_user']} KB "
                                                    f"({r['conns_per_user']} connections each)")),
        ("session entity, active (model)", f"{r['model_active_session_bytes']:,} B (tracemalloc)"),
        ("passivated user, stored", stored),
        ("passivated user (model snapshot)", f"{r['model_passivated_snapshot_bytes']:,} B"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    cpu = r["cpu_pct_during_run"]
    print(f"  CPU during the run (100 = one core of {r['machine_cores']}): "
          f"hosts {group(cpu, 'host')}%, gateways {group(cpu, 'gateway')}%, load generator {group(cpu, 'load')}%")
    rss = r["server_rss_mb"]
    print("  server RSS (MB): " + ", ".join(
        f"{phase} hosts {group(v, 'host')} / gateways {group(v, 'gateway')}"
        for phase, v in rss.items() if v))


if __name__ == "__main__":
    main()
