"""Library micro-benchmark: memory and latency of a user's session entity with large libraries.

    .venv/bin/python -m simulations.bench_library [--sizes 0,100,100000] [--ops 2000]

Prints, per library size (liked tracks):
- passivated: the snapshot as the host stores it (msgpack bytes), and snapshot / restore time
  (median of 5, msgpack included);
- active: memory held by a session entity restored from that snapshot (tracemalloc), and by one
  built through `handle`; both hold the bounded change log (<= 512 changes, kept for `resume`);
- at the largest size: newest-first page latency (limit 50) at random deep offsets, followed
  artists cursor paging, contains, save and remove latency (each one `handle` call, p50/p99).

Ids are random 22-character base62; the catalog is a stand-in that knows every id (the real
catalog's lookups are dict gets, so this measures the session, not the catalog).
"""
from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

import msgpack

from actors.entity import Command, Env, Principal
from actors.session import SessionEntity
from protocols.uris import BASE62, parse_uri

USER = "bench-user"
P = Principal(USER)


class AnyCatalog:
    def track_by_uri(self, uri):
        return parse_uri(uri, "track")

    def album_by_uri(self, uri):
        return parse_uri(uri, "album")

    def artist_by_uri(self, uri):
        return parse_uri(uri, "artist")

    def artist(self, ident):
        return ident


def ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = {"".join(rng.choices(BASE62, k=22)) for _ in range(n)}
    while len(out) < n:
        out.add("".join(rng.choices(BASE62, k=22)))
    return list(out)


class Runner:
    def __init__(self) -> None:
        self.env = Env(catalog=AnyCatalog())
        self.e = SessionEntity(USER, self.env)
        self.now = 1_700_000_000_000

    def run(self, op: str, args: dict):
        self.now += 1
        out = self.e.handle(Command("session", USER, op, args, P, now_ms=self.now))
        if out.records:
            self.e.version += 1
        return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def fmt_us(xs: list[float]) -> str:
    return f"p50 {pct(xs, 0.5) * 1e6:7.1f} us   p99 {pct(xs, 0.99) * 1e6:7.1f} us"


def median_time(fn, repeat: int = 5) -> float:
    """Median wall time of fn() (untraced: tracemalloc slows Python code several times)."""
    xs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return pct(xs, 0.5)


def build(n: int, artists: int = 0) -> Runner:
    r = Runner()
    tracks = ids(n, 1)
    for k in range(0, n, 50):
        r.run("library_save", {"uris": [f"spotify:track:{i}" for i in tracks[k:k + 50]]})
    arts = ids(artists, 2)
    for k in range(0, artists, 50):
        r.run("library_save", {"uris": [f"spotify:artist:{i}" for i in arts[k:k + 50]]})
    r.tracks, r.artists = tracks, arts  # type: ignore[attr-defined]
    return r


def measure_memory(n: int) -> dict:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    r = build(n)
    del r.tracks  # type: ignore[attr-defined]
    gc.collect()
    built = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    def snapshot() -> bytes:
        return msgpack.packb({"state": r.e.snapshot()}, use_bin_type=True)

    def restore() -> SessionEntity:
        e = SessionEntity(USER, Env(catalog=AnyCatalog()))
        e.restore(msgpack.unpackb(blob, raw=False, strict_map_key=False)["state"])
        return e

    t_snap = median_time(snapshot)
    blob = snapshot()
    log_bytes = len(msgpack.packb(r.e.snapshot()["changes"], use_bin_type=True))
    t_restore = median_time(restore)
    r = None  # noqa: F841 - free the built entity before measuring the restored one
    gc.collect()

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    e = restore()
    gc.collect()
    restored = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(e.library["track"]) == n
    return {"n": n, "snapshot": len(blob), "log": log_bytes, "built": built, "restored": restored,
            "t_snap": t_snap, "t_restore": t_restore}


def latencies(n: int, ops: int) -> None:
    artists = min(n, 10_000)
    r = build(n, artists)
    rng = random.Random(9)
    total = len(r.e.library["track"])

    def timed(op: str, args: dict) -> float:
        t = time.perf_counter()
        r.run(op, args)
        return time.perf_counter() - t

    deep = [timed("library_list", {"type": "track", "offset": rng.randrange(total - 50), "limit": 50})
            for _ in range(ops)]
    deepest = [timed("library_list", {"type": "track", "offset": total - 50, "limit": 50})
               for _ in range(ops)]
    arts = sorted(r.artists)  # type: ignore[attr-defined]
    cursor = [timed("library_list", {"type": "artist", "after": rng.choice(arts), "limit": 50})
              for _ in range(ops)]
    contains = [timed("library_contains", {"uris": [f"spotify:track:{rng.choice(r.tracks)}"  # type: ignore[attr-defined]
                                                    for _ in range(50)]}) for _ in range(ops // 4)]
    fresh = ids(ops, 77)
    save = [timed("library_save", {"uris": [f"spotify:track:{i}"]}) for i in fresh]
    victims = rng.sample(r.tracks, ops)  # type: ignore[attr-defined]
    remove = [timed("library_remove", {"uris": [f"spotify:track:{i}"]}) for i in victims]
    save50 = [timed("library_save", {"uris": [f"spotify:track:{i}" for i in victims[k:k + 50]]})
              for k in range(0, ops - 50, 50)]
    print(f"\nlatency with {n:,} liked tracks and {artists:,} followed artists "
          f"(one entity.handle call each, {ops} samples):")
    print(f"  library_list tracks, random offset, limit 50      {fmt_us(deep)}")
    print(f"  library_list tracks, offset {total - 50:,} (oldest)    {fmt_us(deepest)}")
    print(f"  library_list artists, cursor `after`, limit 50   {fmt_us(cursor)}")
    print(f"  library_contains 50 uris                         {fmt_us(contains)}")
    print(f"  library_save 1 uri                               {fmt_us(save)}")
    print(f"  library_remove 1 uri                             {fmt_us(remove)}")
    print(f"  library_save 50 uris                             {fmt_us(save50)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,100,100000")
    ap.add_argument("--ops", type=int, default=2000)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    print("memory per user (liked tracks only):")
    print(f"  {'likes':>8}  {'passivated (snapshot)':>22}  {'of it change log':>16}  {'active (restored)':>18}  "
          f"{'active (built)':>15}  {'snapshot':>9}  {'restore':>8}")
    for n in sizes:
        m = measure_memory(n)
        print(f"  {n:>8,}  {m['snapshot']:>16,} bytes  {m['log']:>10,} bytes  {m['restored']:>12,} bytes  "
              f"{m['built']:>9,} bytes  {m['t_snap'] * 1e3:>6.1f} ms  {m['t_restore'] * 1e3:>5.1f} ms")
    latencies(max(sizes), a.ops)


if __name__ == "__main__":
    main()
