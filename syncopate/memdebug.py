"""An opt-in memory probe for a server process (gateway or host): what grows between two moments.

    SYNCOPATE_TRACEMALLOC=DIR [SYNCOPATE_TRACEMALLOC_AT=300,600,900] syncopate simulate mixed ...

With SYNCOPATE_TRACEMALLOC set (to a directory; "1" means the current one), every gateway and host
process starts tracemalloc when it is ready and, at each of the given times (seconds after its start),
writes DIR/<label>-<pid>-<n>.txt with:
- RSS, the bytes tracemalloc sees, what a full collection found (RSS before/after it and after
  glibc's malloc_trim: RSS that trimming gives back is freed memory the allocator held, not live data);
- the object counts by type, and their change since the previous probe;
- DIR/<label>-<pid>-<n>.tracemalloc, the snapshot (taken after a full collection: live objects
  only); `python -m syncopate.memdebug EARLIER LATER` prints what grew between two, by traceback.
RSS minus what tracemalloc sees is memory it can't see: native (pycrdt's Rust documents, msgspec,
SQLite) and the allocator's free lists. Off by default: tracemalloc costs CPU and memory.
"""
from __future__ import annotations

import collections
import ctypes
import gc
import logging
import os
import threading
import time
import tracemalloc
import types
from pathlib import Path

log = logging.getLogger("syncopate.memdebug")

ENV_DIR = "SYNCOPATE_TRACEMALLOC"
ENV_AT = "SYNCOPATE_TRACEMALLOC_AT"
ENV_REFS = "SYNCOPATE_TRACEMALLOC_REFS"      # type names whose holders each probe describes
FRAMES = 12


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
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


class Probe:
    def __init__(self, label: str, out_dir: Path, at_s: list[float]) -> None:
        self.label, self.out_dir, self.at_s = label, out_dir, sorted(at_s)
        self.prev_types: collections.Counter | None = None
        self.n = 0

    def probe(self) -> Path:
        rss0 = _rss_mb()
        traced0 = tracemalloc.get_traced_memory()[0]
        found = gc.collect()
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


def maybe_start(label: str) -> threading.Thread | None:
    """Start the probe in this process when SYNCOPATE_TRACEMALLOC is set."""
    where = os.environ.get(ENV_DIR)
    if not where:
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


if __name__ == "__main__":
    import sys
    print("\n".join(compare(sys.argv[1], sys.argv[2])))
