"""Gateway memory per open websocket, in one process: where each connection's bytes go.

    PYTHONPATH=$PWD .venv/bin/python -m simulations.bench_ws_memory [--users 1000] [--conns 2] [--top 25]

A LocalServer over the memory store runs in this process (one host, one gateway, the default
asyncio loop as in the Ray gateway actor); the clients run in a child process, so none of their
memory is counted. Each user's session entity is activated first (a `check_device` call), so what
the sockets add is the gateway's (and the session's entry per connection, listed apart: files
under actors/). Then `--users x --conns` websockets open as simulations/bench_library_push.py's
do (token per device, hello, one `session.list` round trip) and stay open while this process
measures: tracemalloc's live bytes before/after (per connection, with the top allocation sites
per connection) and the process's RSS growth per connection.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import multiprocessing as mp
import os
import tempfile
import time
import tracemalloc

import psutil


def clients(url: str, secret: bytes, users: list[str], conns: int, pipe) -> None:
    asyncio.run(_clients(url, secret, users, conns, pipe))


async def _clients(url: str, secret: bytes, users: list[str], conns: int, pipe) -> None:
    import aiohttp

    from gateway.auth import Auth
    auth = Auth(secret)
    ws_url = "ws" + url[len("http"):]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sem = asyncio.Semaphore(100)
    sockets: list = []
    devices = ("phone", "laptop", "tv", "car")

    async def one(uid: str, dev: str) -> None:
        async with sem:
            ws = await http.ws_connect(f"{ws_url}/v1/ws?token={auth.mint(uid, device_id=dev, ttl_s=3600)}",
                                       max_msg_size=0, heartbeat=None)
            while (await ws.receive_json()).get("type") != "hello":
                pass
            await ws.send_str('{"id": "ready", "type": "session.list"}')
            while (await ws.receive_json()).get("id") != "ready":
                pass
            sockets.append(ws)

    await asyncio.gather(*(one(u, devices[k]) for u in users for k in range(conns)))
    pipe.send(len(sockets))
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    for ws in sockets:
        await ws.close()
    await http.close()
    pipe.send("closed")


def site(frame) -> str:
    line = linecache.getline(frame.filename, frame.lineno).strip()
    path = frame.filename
    for marker in ("site-packages/", "/lib/python3", "/work/wt/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.lineno}  {line[:70]}"


def measure(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int) -> None:
    stats = after.compare_to(before, "traceback")
    total = sum(s.size_diff for s in stats)
    host = sum(s.size_diff for s in stats if "/actors/" in s.traceback[0].filename)
    print(f"tracemalloc growth / connection  {total / n / 1024:.2f} KB "
          f"(of which actors/ {host / n / 1024:.2f} KB, the rest {(total - host) / n / 1024:.2f} KB)")
    by_line = after.compare_to(before, "lineno")
    print(f"top {top} allocation sites (bytes per connection, blocks per connection):")
    for s in by_line[:top]:
        print(f"  {s.size_diff / n:8.0f} B  {s.count_diff / n:6.2f}  {site(s.traceback[0])}")


async def main(args) -> None:
    from protocols import messages as m
    from storage.memory import MemoryStore
    from syncopate.server import LocalServer, ServerSpec

    tmp = tempfile.mkdtemp(prefix="wsmem-")
    srv = await LocalServer(ServerSpec(data_dir=tmp, port=0, hosts=1), store=MemoryStore()).start()
    ctx = srv.gateway.ctx
    users = [f"wsmem-user-{i:06d}" for i in range(args.users)]
    for i in range(0, len(users), 200):       # activate the sessions: their cost is not the sockets'
        await asyncio.gather(*(ctx.call(m.SESSION, u, "check_device", {"device_id": "x", "iat": 0})
                               for u in users[i:i + 200]))
    proc = psutil.Process(os.getpid())
    if not args.rss_only:
        tracemalloc.start(args.frames)
    gc.collect()
    await asyncio.sleep(0.5)
    before = None if args.rss_only else tracemalloc.take_snapshot()
    rss0 = proc.memory_info().rss
    mine, theirs = mp.get_context("spawn").Pipe()
    child = mp.get_context("spawn").Process(target=clients, args=(srv.url, srv.secret, users, args.conns, theirs))
    t0 = time.perf_counter()
    child.start()
    loop = asyncio.get_running_loop()
    n = await loop.run_in_executor(None, mine.recv)
    opened = time.perf_counter() - t0
    await asyncio.sleep(1.0)                   # the last frames written, the writers' turns done
    gc.collect()
    after = None if args.rss_only else tracemalloc.take_snapshot()
    rss1 = proc.memory_info().rss
    open_conns = len(ctx.hub.conns)
    print(f"{n} websockets open ({open_conns} in the hub) in {opened:.1f} s")
    if args.rss_only:
        print(f"RSS growth / connection  {(rss1 - rss0) / n / 1024:.2f} KB")
    else:
        print(f"RSS growth / connection  {(rss1 - rss0) / n / 1024:.2f} KB (tracemalloc on: its own traces included)")
        measure(before, after, n, args.top)
    mine.send("close")
    await loop.run_in_executor(None, mine.recv)
    child.join()
    if not args.rss_only:
        tracemalloc.stop()
    await srv.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1, help="tracemalloc frames per allocation")
    ap.add_argument("--rss-only", action="store_true", help="no tracemalloc: the RSS growth alone")
    asyncio.run(main(ap.parse_args()))
