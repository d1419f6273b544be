"""`python -m catalog export FILE [--seed N] [--tracks N]` writes a generated catalog as a file;
`python -m catalog check FILE` validates a file and prints its size;
`python -m catalog bench [--tracks N]` measures build time, memory and search (docs/catalog.md)."""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc

import orjson

from catalog import Catalog


def bench(tracks: int) -> None:
    Catalog.generated(tracks=100)  # imports and word lists out of the way
    times = []
    for _ in range(5):
        gc.collect()
        t0 = time.perf_counter()
        Catalog.generated(tracks=tracks)
        times.append(time.perf_counter() - t0)
    print(f"build {tracks} tracks: min {min(times) * 1e3:.0f} ms, median {statistics.median(times) * 1e3:.0f} ms")
    gc.collect()
    tracemalloc.start()
    cat = Catalog.generated(tracks=tracks)
    built, _ = tracemalloc.get_traced_memory()
    cat.search("warmup", "track")
    indexed, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{cat!r}: {built / 2**20:.2f} MiB ({built / len(cat):.0f} B a track); "
          f"search index +{(indexed - built) / 2**20:.2f} MiB")
    cat = Catalog.generated(tracks=tracks)
    t0 = time.perf_counter()
    cat.search("love", "track")
    print(f"first search (builds the index): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    queries = ("a", "the", "elec hea", "artist:the year:1990-1999", "mid")
    t0 = time.perf_counter()
    for q in queries:
        cat.search(q, "track,album,artist", 20, 0)
    print(f"uncached search over 3 types: {(time.perf_counter() - t0) * 1e3 / len(queries):.1f} ms each")
    track = cat.track(cat.track_ids[0])
    t0 = time.perf_counter()
    for _ in range(10_000):
        cat.track_object(track)
    print(f"track_object: {(time.perf_counter() - t0) * 100:.1f} us")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m catalog")
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a generated catalog in the file format")
    ex.add_argument("file")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--tracks", type=int, default=10_000)
    ck = sub.add_parser("check", help="validate a catalog file")
    ck.add_argument("file")
    bn = sub.add_parser("bench", help="measure the generated catalog")
    bn.add_argument("--tracks", type=int, default=10_000)
    args = p.parse_args(argv)
    if args.cmd == "bench":
        bench(args.tracks)
        return 0
    if args.cmd == "export":
        cat = Catalog.generated(seed=args.seed, tracks=args.tracks)
        with open(args.file, "wb") as f:
            f.write(orjson.dumps(cat.to_dict(), option=orjson.OPT_INDENT_2))
        print(cat)
        return 0
    try:
        print(Catalog.from_file(args.file))
    except ValueError as exc:
        print(f"invalid catalog: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
