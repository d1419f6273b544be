"""SQLite group commits from several processes on one file: how long an append waits for the others.

    .venv/bin/python -m simulations.bench_sqlite_writers [--procs 2] [--seconds 10] [--entries 12]
                                                         [--lock on|off] [--gap-ms 0] [--dir DIR]

Every host of a single-machine deployment appends to the one syncopate.db. Each of --procs
processes opens a SQLiteStore on one fresh file and, in a closed loop, appends a group commit of
--entries records (one per key, as the host's committer does) with the store's thread-side
_append (synchronous=FULL: each COMMIT is fsync'd). Printed per run: appends/s over all processes,
the append duration p50 / p99 / max, how many took over 10 ms, the appends of each process (a
starved writer shows there), and the writer-lock waits.
`--lock off` replaces the cross-process writer lock (storage/sqlite_writer.py) by nothing, which is
the store before that lock: a writer that finds the file locked sleeps in SQLite's busy handler.
The numbers are wall-clock: on a shared machine compare runs made back to back only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time


def _worker(path: str, idx: int, seconds: float, entries: int, lock: bool, gap_s: float, start_at: float, out) -> None:
    from storage.base import Append, Record
    from storage.sqlite import SQLiteStore
    from storage.sqlite_writer import WriterLock
    if not lock:
        WriterLock.held = lambda self: contextlib.nullcontext()
    st = SQLiteStore(path)
    st._open()
    keys = [f"session:w{idx}-{i}" for i in range(entries)]
    epochs = {k: st._acquire(k, None) for k in keys}
    seq = 0
    lat = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        seq += 1
        batch = [Append(k, epochs[k], [Record(seq, b"x" * 120)]) for k in keys]
        t0 = time.perf_counter()
        st._append(batch)
        lat.append((time.perf_counter() - t0) * 1000)
        if gap_s:
            time.sleep(gap_s)      # the host's release of a batch and its next handling, between commits
    t = st.timing()
    st._db.close()
    out.put({"lat": lat, "writer_waits": t["writer_waits"], "writer_wait_s": t["writer_wait_s"]})


def run(procs: int, seconds: float, entries: int, lock: bool, base: str | None, gap_s: float = 0.0) -> dict:
    d = tempfile.mkdtemp(prefix="bench-sqlw-", dir=base)
    path = os.path.join(d, "syncopate.db")
    from storage.sqlite import SQLiteStore
    st = SQLiteStore(path)
    st._open()                      # schema and WAL before the workers race for it
    st._db.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 2.0
    ps = [ctx.Process(target=_worker, args=(path, i, seconds, entries, lock, gap_s, start_at, q)) for i in range(procs)]
    for p in ps:
        p.start()
    res = [q.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join()
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    lat = sorted(x for r in res for x in r["lat"])

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None
    return {"lock": "on" if lock else "off", "procs": procs, "gap_ms": gap_s * 1000, "appends_per_s": round(len(lat) / seconds, 1),
            "p50_ms": pct(.5), "p99_ms": pct(.99), "max_ms": round(lat[-1], 2) if lat else None,
            "over_10ms": sum(1 for x in lat if x > 10), "per_process": [len(r["lat"]) for r in res],
            "writer_waits": sum(r["writer_waits"] for r in res),
            "writer_wait_ms_mean": round(sum(r["writer_wait_s"] for r in res) * 1000
                                         / max(1, sum(r["writer_waits"] for r in res)), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.bench_sqlite_writers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--entries", type=int, default=12, help="records per group commit")
    p.add_argument("--lock", default="on,off", help="on, off, or both in turn (on,off)")
    p.add_argument("--rounds", type=int, default=1, help="times the --lock list is run, alternating")
    p.add_argument("--gap-ms", type=float, default=0.0, help="pause of each writer between its appends")
    p.add_argument("--dir", help="where the database files go (default: the temp dir)")
    a = p.parse_args(argv)
    for _ in range(a.rounds):
        for mode in a.lock.split(","):
            print(json.dumps(run(a.procs, a.seconds, a.entries, mode == "on", a.dir, a.gap_ms / 1000)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
