"""What each op type leaves alive in a host, per op: the data windows and anything else that stays.

    .venv/bin/python -m simulations.bench_retention [--ops 2000] [--only player.next,device.progress]
        [--sites N] [--allocators] [--churn CYCLES]

One EntityHost in process over the in-memory store (the scale model's set-up, simulations/scale_model.py:
100 users with sessions and two-device device groups, 10 playlists), on a clock of its own that moves
1 s per 100 ops, as the 200-user soak's hosts see them. Per op type: a warm-up round of `ops` ops (with
op ids, as a gateway sends them), the clock moved past the op cache's window and one write to every
entity (rows older than the window lapse on the entity's next write), a full collection and a
tracemalloc snapshot; the same again; the difference divided by `ops` is what one op leaves alive.
The in-memory store's log (`memory.py` and the packed entry from `slot.py` it keeps) is printed but
is not host memory in a server (the log is in SQLite or PostgreSQL there): `host B/op` leaves it out.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
import tracemalloc
import types
import uuid

STORE_FRAMES = ("storage/memory.py", "actors/slot.py")      # the store's copy of the log, in process only


def _store_only(tb) -> bool:
    # the packed log entry (slot.pack via host._handle's `entry = pack(body)`) and the store's list
    files = [f.filename for f in tb]
    return any(f.endswith("storage/memory.py") for f in files) or (
        files[-1].endswith("actors/slot.py") and any(f.endswith("actors/host.py") for f in files))


async def run(a) -> None:
    from actors.entity import Command, Principal
    from simulations.scale_model import Model
    m = Model(types.SimpleNamespace(users=100, devices_per_user=2, playlists=10, tracks_per_playlist=20,
                                    liked=20, ops=a.ops, seed=1))
    await m.setup()
    await m.populate()
    clock = [time.time()]
    m.host.clock = lambda: clock[0]
    rng = random.Random(2)
    users = [m.user(i) for i in range(100)]
    owner_of = {pid: m.user(j % 100) for j, pid in enumerate(m.pids)}
    P = Principal

    def oid() -> str:
        return uuid.uuid4().hex[:12]

    gens = {
        "player.next": lambda i, u: Command("devicegroup", u, "next", {}, P(u), op_id=oid()),
        "player.seek": lambda i, u: Command("devicegroup", u, "seek", {"position_ms": 1000 + i % 60000}, P(u), op_id=oid()),
        "player.volume": lambda i, u: Command("devicegroup", u, "volume", {"volume_percent": 10 + i % 90}, P(u), op_id=oid()),
        "player.play(context)": lambda i, u: Command("devicegroup", u, "play", {"context_uri": m.albums[i % len(m.albums)]},
                                                     P(u), op_id=oid()),
        "device.heartbeat": lambda i, u: Command("devicegroup", u, "heartbeat", {"device_id": "dev0"}, P(u), op_id=oid()),
        "device.progress": lambda i, u: Command("devicegroup", u, "progress", {
            "event_id": uuid.uuid4().hex, "device_id": "dev0", "uri": m.tracks[i % len(m.tracks)], "ms_played": 31_000},
            P(u), op_id=oid()),
        "player.state": lambda i, u: Command("devicegroup", u, "state", {}, P(u)),
        "library.contains(20)": lambda i, u: Command("session", u, "library_contains",
                                                     {"uris": m.tracks[i % 5000:i % 5000 + 20]}, P(u)),
        # a save and a remove of the same track in turn (op i and i + 1): the library keeps its size, the
        # session's change log (512 items a user) takes one item an op
        "library.save/remove": lambda i, u: Command("session", users[i // 2 % 100],
                                                    "library_save" if i % 2 == 0 else "library_remove",
                                                    {"uris": [m.tracks[1000 + (i // 2) % 3000]]}, P(users[i // 2 % 100]),
                                                    op_id=oid()),
        # an add and a remove of the same track in turn on one playlist (its owner): the entries stay,
        # the Yjs document keeps what it keeps of the deleted items (pycrdt: C heap, not Python)
        "playlist.add/remove": lambda i, u: (
            Command("playlist", m.pids[i // 2 % len(m.pids)], "add", {"uris": [m.tracks[2000 + i // 2 % 1000]]},
                    P(owner_of[m.pids[i // 2 % len(m.pids)]]), op_id=oid()) if i % 2 == 0 else
            Command("playlist", m.pids[i // 2 % len(m.pids)], "remove",
                    {"tracks": [{"uri": m.tracks[2000 + i // 2 % 1000]}]},
                    P(owner_of[m.pids[i // 2 % len(m.pids)]]), op_id=oid())),
        "playlist.items": lambda i, u: Command("playlist", m.pids[i % len(m.pids)], "items", {"limit": 100},
                                               P(owner_of[m.pids[i % len(m.pids)]])),
    }

    def lapse() -> list:
        clock[0] += 400.0                           # past the op cache's 300 s window
        return ([Command("devicegroup", u, "volume", {"volume_percent": 50}, P(u), op_id=oid()) for u in users]
                + [Command("session", u, "library_contains", {"uris": m.tracks[:1]}, P(u)) for u in users])

    async def round_(gen) -> None:
        # pairs (op i, i + 1) go to one entity in turn: the save/remove and add/remove generators
        cmds = [gen(i, users[rng.randrange(len(users))]) for i in range(a.ops)]
        for k in range(0, len(cmds), 100):
            clock[0] += 1.0
            await m.submit(cmds[k:k + 100])
        await m.submit(lapse())

    if a.allocators:
        await _allocators(a, gens, round_, m.store)
        return
    if a.churn:
        await _churn(a, m, users, oid)
        return
    tracemalloc.start(16)
    print("| op | ops | B/op alive (all) | of it the in-memory store's log | host B/op | largest host site |")
    print("|---|---:|---:|---:|---:|---|")
    for name, gen in gens.items():
        if a.only and name not in a.only:
            continue
        await round_(gen)
        gc.collect()
        s0 = tracemalloc.take_snapshot()
        await round_(gen)
        gc.collect()
        s1 = tracemalloc.take_snapshot()
        diffs = s1.compare_to(s0, "traceback")
        total = sum(d.size_diff for d in diffs)
        store = sum(d.size_diff for d in diffs if _store_only(d.traceback))
        host = [d for d in diffs if not _store_only(d.traceback)]
        top = max(host, key=lambda d: d.size_diff, default=None)
        site = (f"{top.traceback[-1].filename.split('/')[-1]}:{top.traceback[-1].lineno} "
                f"({top.size_diff / a.ops:+.0f})") if top is not None and top.size_diff > 0 else ""
        print(f"| {name} | {a.ops} | {total / a.ops:.0f} | {store / a.ops:.0f} | {(total - store) / a.ops:.0f} | {site} |",
              flush=True)
        for d in sorted(host, key=lambda d: -d.size_diff)[:a.sites]:
            if d.size_diff > 0:
                where = " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in list(d.traceback)[::-1][:4])
                print(f"|   {name} site | | | | {d.size_diff / a.ops:+.0f} | {where} |", flush=True)


async def _allocators(a, gens, round_, store) -> None:
    """The same rounds without tracemalloc (its own tables are glibc allocations): what each op type
    leaves in glibc's heap in use (Python's objects over 512 bytes, and native: pycrdt's Rust, msgpack,
    SQLite) and in pymalloc's blocks (Python's small objects), per op; the records the in-memory store
    kept in the measured round are dropped before measuring (in a server the log is on disk)."""
    from syncopate.memdebug import mallinfo, pymalloc

    def glibc_mb() -> float:
        m = mallinfo()
        return m["uordblks"] + m["hblkhd"]

    print("| op | ops | glibc in use B/op | pymalloc blocks B/op |")
    print("|---|---:|---:|---:|")
    for name, gen in gens.items():
        if a.only and name not in a.only:
            continue
        await round_(gen)
        gc.collect()
        g0, p0 = glibc_mb(), pymalloc()["allocated_blocks_mb"]
        logs = {k: len(v) for k, v in store._records.items()}
        await round_(gen)
        for k, v in store._records.items():       # the store's copy of this round's log: not host memory
            del v[logs.get(k, 0):]
        gc.collect()
        g1, p1 = glibc_mb(), pymalloc()["allocated_blocks_mb"]
        print(f"| {name} | {a.ops} | {(g1 - g0) * 2**20 / a.ops:.0f} | {(p1 - p0) * 2**20 / a.ops:.0f} |", flush=True)


async def _churn(a, m, users, oid) -> None:
    """Every resident entity dropped and activated again, `a.churn` times (what a lost lease, a
    passivation and a host restart do): what each cycle leaves behind, in glibc's heap in use and in
    pymalloc's blocks, and how many of each entity class are alive (a dropped entity must be freed;
    the store's log grows by a write an entity a cycle, ~0.1 MB)."""
    from actors.entity import Command, Principal
    from syncopate.memdebug import mallinfo, pymalloc

    def cmds() -> list:
        out = []
        for u in users:
            out += [Command("devicegroup", u, "volume", {"volume_percent": 50}, Principal(u), op_id=oid()),
                    Command("session", u, "library_contains", {"uris": m.tracks[:5]}, Principal(u))]
        return out + [Command("playlist", pid, "items", {"limit": 10}, Principal(m.user(j % 100)))
                      for j, pid in enumerate(m.pids)]

    await m.submit(cmds())
    print("| cycle | dropped | glibc in use MB | pymalloc MB | alive: entities / playlist documents |")
    print("|---:|---:|---:|---:|---|")
    for cycle in range(a.churn):
        dropped = 0
        for slot in list(m.host.slots.values()):
            if not slot.phantom and slot.entity is not None:
                m.host._evict(slot)
                dropped += 1
        await m.submit(cmds())
        gc.collect()
        mi, pm = mallinfo(), pymalloc()
        objs = gc.get_objects()
        ents = sum(1 for o in objs if type(o).__name__.endswith("Entity"))
        docs = sum(1 for o in objs if type(o).__name__ == "PlaylistDoc")
        del objs                     # the list holds every object: the next cycle must not count it
        print(f"| {cycle} | {dropped} | {mi['uordblks'] + mi['hblkhd']:.2f} | {pm.get('allocated_blocks_mb', -1):.2f} | "
              f"{ents} / {docs} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--allocators", action="store_true",
                    help="no tracemalloc: glibc's bytes in use and pymalloc's blocks left per op")
    ap.add_argument("--churn", type=int, default=0,
                    help="instead: drop and reactivate every entity this many times, what each cycle leaves")
    ap.add_argument("--sites", type=int, default=0, help="also print this many of the largest host sites")
    ap.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
