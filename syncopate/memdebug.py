"""An opt-in memory probe for a server process (gateway or host): what grows between two moments.

    SYNCOPATE_TRACEMALLOC=DIR [SYNCOPATE_TRACEMALLOC_AT=300,600,900] syncopate simulate mixed ...

With SYNCOPATE_TRACEMALLOC set (to a directory; "1" means the current one), every gateway and host
process starts tracemalloc when it is ready and, at each of the given times (seconds after its start),
writes DIR/<label>-<pid>-<n>.txt (SYNCOPATE_TRACEMALLOC_ONLY=host: only the processes whose label starts
so, e.g. the hosts without slowing the gateway) with:
- RSS, the bytes tracemalloc sees, what a full collection found (RSS before/after it and after
  glibc's malloc_trim: RSS that trimming gives back is freed memory the allocator held, not live data);
- the object counts by type, and their change since the previous probe;
- DIR/<label>-<pid>-<n>.tracemalloc, the snapshot (taken after a full collection: live objects
  only); `python -m syncopate.memdebug EARLIER LATER` prints what grew between two, by traceback.
RSS minus what tracemalloc sees is memory it can't see: native (pycrdt's Rust documents, msgspec,
SQLite) and the allocator's free lists. Off by default: tracemalloc costs CPU and memory (under a
200-user soak it slowed the gateway enough to back commands up: use it to name what grows, not to
measure how fast).

Without tracing, SYNCOPATE_MEMSTATS=DIR [SYNCOPATE_MEMSTATS_EVERY=60] writes DIR/<label>-<pid>.jsonl,
a line a minute: RSS by region, glibc's in-use and free bytes (mallinfo2), pymalloc's in-use bytes
and blocks; with SYNCOPATE_MEMSTATS_TYPES=1 also gc-tracked objects and the types that grew, and
SYNCOPATE_TRACEMALLOC_REFS=tuple,list a few new instances of those types with their holders (both
walk gc.get_objects() from the probe's thread, which once broke a request: see Stats); `python -m syncopate.memdebug slopes DIR [WARMUP_S]`
prints the slope of each per hour.
"""
from __future__ import annotations

import collections
import ctypes
import gc
import logging
import os
import sys
import threading
import time
import tracemalloc
import types
import types as types_mod
from pathlib import Path

log = logging.getLogger("syncopate.memdebug")

ENV_DIR = "SYNCOPATE_TRACEMALLOC"
ENV_AT = "SYNCOPATE_TRACEMALLOC_AT"
ENV_STATS = "SYNCOPATE_MEMSTATS"            # DIR: allocator figures every minute, no tracing
ENV_REFS = "SYNCOPATE_TRACEMALLOC_REFS"      # type names whose holders each probe describes
ENV_ONLY = "SYNCOPATE_TRACEMALLOC_ONLY"      # label prefix (e.g. "host"): trace only those processes
FRAMES = 12


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6")
    return _LIBC


def _malloc_trim() -> bool:
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


def type_counts() -> collections.Counter:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _describe(o) -> str:
    t = type(o).__qualname__
    if isinstance(o, dict):
        return f"dict({len(o)}) keys {list(o)[:4]!r:.120}"
    if isinstance(o, (list, tuple, set, frozenset, collections.deque)):
        return f"{t}({len(o)})"
    if hasattr(o, "f_code"):
        return f"frame {o.f_code.co_name} {o.f_code.co_filename}:{o.f_lineno}"
    if callable(o) and hasattr(o, "__qualname__"):
        return f"{t} {o.__qualname__}"
    return t


def holders(type_name: str, samples: int = 4, depth: int = 6) -> list[str]:
    """Chains of referrers of a few instances of `type_name`: at each step the referrers (up to 4),
    following the first that is an object (not a container); this function's own locals left out."""
    objs = [o for o in gc.get_objects() if type(o).__qualname__ == type_name]
    out = [f"### {type_name}: {len(objs)} instances"]
    if objs and hasattr(objs[0], "op") and hasattr(objs[0], "kind"):     # commands: which ones
        ops = collections.Counter(f"{getattr(o, 'kind', '?')}.{getattr(o, 'op', '?')}" for o in objs)
        out.append("  by op: " + ", ".join(f"{k} {n}" for k, n in ops.most_common(12)))
    step = max(1, len(objs) // samples)
    picks = objs[::step][:samples]
    mine = {id(objs), id(picks), id(out)}
    for i in range(len(picks)):
        cur, seen, line = picks[i], set(mine), [_describe(picks[i])]
        for _ in range(depth):
            refs = gc.get_referrers(cur)
            refs = [r for r in refs if id(r) not in seen and r is not line and not isinstance(r, types.FrameType)]
            if not refs:
                break
            seen.update(id(r) for r in refs)
            line.append("[" + " | ".join(_describe(r) for r in refs[:4]) + (f" +{len(refs) - 4}" if len(refs) > 4 else "") + "]")
            plain = (list, tuple, set, dict, types.CellType)
            cur = next((r for r in refs if not isinstance(r, plain)), refs[0])
            del refs
        out.append("  " + " <- ".join(line))
    del objs, picks
    return out


def _garbage_samples(garbage: list, per_type: int = 2, kinds: int = 12) -> list[str]:
    """A few described instances of the commonest non-container types in a collection's garbage:
    functions, frames and objects say where a cycle was made."""
    plain = (tuple, list, dict, set, types.CellType)
    by: dict[str, list] = {}
    for o in garbage:
        if not isinstance(o, plain):
            by.setdefault(type(o).__qualname__, []).append(o)
    out = []
    for name, objs in sorted(by.items(), key=lambda kv: -len(kv[1]))[:kinds]:
        for o in objs[:per_type]:
            out.append(f"  {name}: {_describe(o)} {repr(o)[:120]}")
    return out


class Probe:
    def __init__(self, label: str, out_dir: Path, at_s: list[float]) -> None:
        self.label, self.out_dir, self.at_s = label, out_dir, sorted(at_s)
        self.prev_types: collections.Counter | None = None
        self.n = 0

    def probe(self) -> Path:
        rss0 = _rss_mb()
        traced0 = tracemalloc.get_traced_memory()[0]
        # what the collection finds, by type: unreachable objects kept in gc.garbage for a moment
        # (DEBUG_SAVEALL), counted, then let go (the next collection frees them)
        # (DEBUG_SAVEALL), counted, then let go (the next collection frees them); everything the
        # collector's sweeps froze is unfrozen first, or neither this nor get_objects() would see it
        gc.unfreeze()
        flags = gc.get_debug()
        gc.set_debug(flags | gc.DEBUG_SAVEALL)
        try:
            found = gc.collect()
            garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
            samples = _garbage_samples(gc.garbage)
        finally:
            gc.garbage.clear()
            gc.set_debug(flags)
        gc.collect()
        rss1 = _rss_mb()
        trimmed = _malloc_trim()
        rss2 = _rss_mb()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        traced1 = tracemalloc.get_traced_memory()[0]
        types = type_counts()
        lines = [f"{self.label} pid {os.getpid()} probe {self.n} at {time.strftime('%H:%M:%S')}",
                 f"rss_mb {rss0:.1f} -> after gc.collect {rss1:.1f} -> after malloc_trim({trimmed}) {rss2:.1f}",
                 f"traced_mb {traced0 / 2**20:.1f} -> after gc.collect {traced1 / 2**20:.1f}; "
                 f"gc found {found} unreachable; gc.garbage {len(gc.garbage)}; frozen {gc.get_freeze_count()}",
                 f"untraced (rss - traced) mb {rss2 - traced1 / 2**20:.1f}", "", "## object counts (top 40)"]
        lines += [f"{n:10d}  {t}" for t, n in types.most_common(40)]
        lines += ["", "## unreachable objects the collection found, by type (top 25): cyclic garbage that",
                  "## waited for a collection", *[f"{n:10d}  {t}" for t, n in garbage.most_common(25)],
                  "", "## some of them", *samples]
        if self.prev_types is not None:
            lines += ["", "## object count change since the previous probe (top 40)"]
            diff = types.copy()
            diff.subtract(self.prev_types)
            lines += [f"{n:+10d}  {t} (now {types[t]})" for t, n in
                      sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:40] if n]
        for name in filter(None, os.environ.get(ENV_REFS, "").split(",")):
            lines += [""] + holders(name.strip())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.label}-{os.getpid()}-{self.n}.txt"
        path.write_text("\n".join(lines) + "\n")
        # Compared out of this process (`python -m syncopate.memdebug A B`): grouping a large snapshot
        # by traceback takes minutes of a busy loop's time.
        snap.dump(str(path.with_suffix(".tracemalloc")))
        self.prev_types = types
        self.n += 1
        return path

    def run(self) -> None:
        start = time.monotonic()
        for at in self.at_s:
            # fixed times, nothing to synchronise with; a thread of its own, so no task of the
            # process's event loop can cancel it (each probe holds the GIL while it runs)
            time.sleep(max(0.0, start + at - time.monotonic()))
            try:
                log.warning("memory probe written: %s", self.probe())
            except Exception:  # noqa: BLE001 - a debugging aid must not take the process down
                log.exception("memory probe failed")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo() -> dict:
    """glibc's allocator, all arenas: `uordblks` bytes in use, `fordblks` free inside arenas (held,
    fragmentation), `hblkhd` in mmap'd blocks. pycrdt (Rust), SQLite, msgpack and Ray's C++ allocate here;
    Python's small objects do not (pymalloc: see pymalloc())."""
    try:
        fn = _libc().mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _Mallinfo2
    m = fn()
    return {k: round(getattr(m, k) / 2**20, 2) for k in ("arena", "hblkhd", "uordblks", "fordblks")}


def _c_stderr(fn) -> str:
    """What `fn()` writes to the C stderr (fd 2), captured through a temporary file."""
    import tempfile
    with tempfile.TemporaryFile("w+") as f:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read()


def malloc_arenas() -> int | None:
    """How many glibc arenas this process has (malloc_stats() prints one "Arena N:" block each):
    MALLOC_ARENA_MAX caps it (syncopate/process_env.py)."""
    try:
        fn = _libc().malloc_stats
    except (OSError, AttributeError):
        return None
    return _c_stderr(fn).count("Arena ")


def pymalloc() -> dict:
    """Python's own allocator: arenas held and bytes in allocated blocks (sys._debugmallocstats, which
    writes to the C stderr)."""
    import re
    text = _c_stderr(sys._debugmallocstats)
    out = {}
    for key, pat in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                     ("allocated_blocks_mb", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                     ("free_blocks_mb", r"# bytes in available blocks\s*=\s*([\d,]+)")):
        m = re.search(pat, text)
        if m:
            v = int(m.group(1).replace(",", ""))
            out[key] = v if key == "arenas" else round(v / 2**20, 2)
    return out


def sqlite_mb() -> float | None:
    """SQLite's own heap in use, all connections of this process (sqlite3_memory_used: page caches,
    statements, the WAL index's copy): a part of glibc's bytes in use that Python does not see."""
    import sys
    if "sqlite3" not in sys.modules:
        return None
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")      # the library _sqlite3 is linked to: already loaded
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return round(lib.sqlite3_memory_used() / 2**20, 2)
    except (OSError, AttributeError):
        return None


def _smaps() -> dict:
    """Resident anonymous MB by region: the brk heap, anonymous mappings, and file-backed."""
    out = {"heap": 0.0, "anon_maps": 0.0, "file": 0.0}
    region = None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                if "-" in line.split(" ", 1)[0] and not line[0].isupper():
                    parts = line.split()
                    path = parts[5] if len(parts) > 5 else ""
                    region = "heap" if path == "[heap]" else ("anon_maps" if not path or path.startswith("[anon")
                                                               else ("file" if path.startswith("/") else None))
                elif line.startswith("Rss:") and region is not None:
                    out[region] += int(line.split()[1]) / 1024
    except OSError:
        return {}
    return {k: round(v, 1) for k, v in out.items()}


def stats_line(label: str, t0: float) -> dict:
    return {"label": label, "pid": os.getpid(), "t": round(time.monotonic() - t0, 1), "rss_mb": round(_rss_mb(), 1),
            **{f"smaps_{k}": v for k, v in _smaps().items()}, **{f"malloc_{k}": v for k, v in mallinfo().items()},
            **{f"pymalloc_{k}": v for k, v in pymalloc().items()}, "py_blocks": sys.getallocatedblocks(),
            "sqlite_mb": sqlite_mb(), "malloc_arenas": malloc_arenas(), "malloc_arena_max_env": os.environ.get("MALLOC_ARENA_MAX"),
            # collections per generation so far: a full (generation 2) one is what frees old cyclic garbage
            "gc_collections": [g["collections"] for g in gc.get_stats()],
            "gc_counts": list(gc.get_count()),
            "threads": threading.active_count(), **_stall_stats()}


def _stall_stats() -> dict:
    """The stall recorder's counts (syncopate/stalls.py) when it is on in this process."""
    from syncopate import stalls
    rec = stalls.current()
    return rec.stats() if rec is not None else {}


class Stats:
    """One line of allocator figures per step(); with `watch` type names, a few of their instances
    new since the previous step, each with the kinds of its holders."""

    def __init__(self, label: str, watch: list[str] | None = None, types: bool = False) -> None:
        # `types` and `watch` walk gc.get_objects(), which hands out references to every tracked
        # object, some still being built on another thread: a soak with them on had one
        # "SystemError: bad argument to internal function" (a tuple resized while this thread held a
        # reference). Off unless asked for (SYNCOPATE_MEMSTATS_TYPES=1): a diagnosis, never a proof run.
        self.label, self.watch, self.types = label, list(watch or []), types or bool(watch)
        self.t0 = time.monotonic()
        self._prev: collections.Counter | None = None
        self._seen: dict[str, set[int]] = {}

    def step(self) -> dict:
        line = stats_line(self.label, self.t0)
        if not self.types:
            return line
        # gc.get_objects() does not list frozen objects, and the collector's sweeps freeze what
        # survives them (actors/collector.py): counted only once unfrozen (a diagnosis, not a proof run)
        gc.unfreeze()
        line["gc_objects"] = len(gc.get_objects())
        types = type_counts()
        if self._prev is not None:
            diff = types.copy()
            diff.subtract(self._prev)
            line["types_grown"] = [[t, n, types[t]] for t, n in diff.most_common(8) if n > 0]
        self._prev = types
        for name in self.watch:
            objs = [o for o in gc.get_objects() if type(o).__qualname__ == name]
            ids = {id(o) for o in objs}
            new = [o for o in objs if id(o) not in self._seen.get(name, ids)]
            self._seen[name] = ids
            picks = new[:: max(1, len(new) // 6)][:6]
            line[f"new_{name}"] = [[repr(o)[:160], [_describe(r) for r in gc.get_referrers(o)
                                                     if r is not objs and r is not new and r is not picks
                                                     and not isinstance(r, types_mod.FrameType)][:3]]
                                   for o in picks]
            del objs, new, picks
        return line


def _stats_loop(label: str, out: Path, every_s: float) -> None:
    import json
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = Stats(label, [x.strip() for x in os.environ.get(ENV_REFS, "").split(",") if x.strip()],
                  types=os.environ.get(ENV_STATS + "_TYPES") == "1")
    while True:
        try:
            line = stats.step()
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")
        except Exception:  # noqa: BLE001 - a debugging aid must not take the process down
            log.exception("memory stats failed")
        time.sleep(every_s)          # the schedule itself: nothing to wait on


def maybe_start(label: str) -> threading.Thread | None:
    """Start the probe in this process when SYNCOPATE_TRACEMALLOC (or SYNCOPATE_MEMSTATS) is set."""
    stats_dir = os.environ.get(ENV_STATS)
    if stats_dir:
        # cheap (no tracing): one line of allocator figures every SYNCOPATE_MEMSTATS_EVERY seconds
        every = float(os.environ.get(ENV_STATS + "_EVERY", "60"))
        threading.Thread(target=_stats_loop, args=(label, Path(stats_dir) / f"{label}-{os.getpid()}.jsonl", every),
                         name="memory-stats", daemon=True).start()
    where = os.environ.get(ENV_DIR)
    if not where or not label.startswith(os.environ.get(ENV_ONLY, "")):
        return None
    at = [float(x) for x in os.environ.get(ENV_AT, "300,600,900").split(",") if x.strip()]
    tracemalloc.start(FRAMES)
    probe = Probe(label, Path("." if where == "1" else where), at)
    thread = threading.Thread(target=probe.run, name="memory-probe", daemon=True)
    thread.start()
    return thread


def compare(earlier: str, later: str, top: int = 25, frames: int = FRAMES) -> list[str]:
    a, b = tracemalloc.Snapshot.load(earlier), tracemalloc.Snapshot.load(later)
    out = [f"traced {sum(t.size for t in a.traces) / 2**20:.1f} -> {sum(t.size for t in b.traces) / 2**20:.1f} MB",
           "", f"## growth by traceback (top {top})"]
    for st in b.compare_to(a, "traceback")[:top]:
        out.append(f"{st.size_diff / 1024:+.1f} KiB ({st.count_diff:+d} blocks), now {st.size / 1024:.1f} KiB")
        out += ["    " + line for line in st.traceback.format(limit=frames)]
    out += ["", f"## growth by line (top {top})"]
    out += [f"{st.size_diff / 1024:+.1f} KiB ({st.count_diff:+d})  {st.traceback[0]}"
            for st in b.compare_to(a, "lineno")[:top]]
    return out


FIELDS = ("rss_mb", "smaps_anon_maps", "malloc_uordblks", "malloc_fordblks", "sqlite_mb",
          "pymalloc_allocated_blocks_mb", "py_blocks")


def slopes(stats_dir: str, warmup_s: float = 300.0) -> list[str]:
    """Per process of a SYNCOPATE_MEMSTATS directory: the least-squares slope per hour of each figure
    after `warmup_s` (RSS, anonymous maps, glibc in use / free, pymalloc in use, gc-tracked objects)."""
    import json
    from simulations.soak import fit
    out = ["| process | window (s) | " + " | ".join(f"{f} /h" for f in FIELDS) + " |",
           "|---|---|" + "---:|" * len(FIELDS)]
    for path in sorted(Path(stats_dir).glob("*.jsonl")):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["t"] >= warmup_s]
        if len(rows) < 3:
            continue
        cells = []
        for f in FIELDS:
            pts = [(r["t"], r[f]) for r in rows if f in r]
            cells.append(f"{fit(pts) * 3600:+.1f}" if len(pts) >= 3 else "")
        out.append(f"| {path.stem} | {rows[0]['t']:.0f}-{rows[-1]['t']:.0f} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    import sys
    if sys.argv[1] == "slopes":
        print("\n".join(slopes(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 300.0)))
    else:
        print("\n".join(compare(sys.argv[1], sys.argv[2])))
