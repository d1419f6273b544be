"""Which stalls the slow samples of a benchmark met: a benchmark's (sent at, latency) samples laid
beside the events a SYNCOPATE_STALLS directory holds (syncopate/stalls.py).

    python -m simulations.stall_report STALLS_DIR SAMPLES.json [SLOW_MS]

SAMPLES.json: [[sent_at_s_since_start, latency_ms, sent_at], ...] with sent_at on CLOCK_MONOTONIC
(perf_counter on Linux), as simulations/bench_library_push.py --dump writes them. A slow sample "met" a stall
when the stall's window overlaps the sample's flight [sent_at, sent_at + latency].
"""
from __future__ import annotations

import bisect
import json
import sys
from collections import Counter, defaultdict

from syncopate.stalls import load


def cause(e: dict) -> str:
    if e["kind"] == "gc":
        return f"{e['label']} gc gen{e['gen']}"
    return f"{e['label']} lag"


def explain(samples: list[tuple[float, float]], stalls_dir: str, slow_ms: float = 10.0, top: int = 12) -> list[str]:
    events = sorted(load(stalls_dir), key=lambda e: e["t"])
    out = [f"## stalls recorded ({stalls_dir})"]
    by_cause: dict[str, list[float]] = defaultdict(list)
    for e in events:
        by_cause[cause(e)].append(e["ms"])
    for c, ms in sorted(by_cause.items()):
        ms.sort()
        out.append(f"  {c:<28} {len(ms):>5} events  total {sum(ms):8.1f} ms  p50 {ms[len(ms) // 2]:6.1f}  "
                   f"max {ms[-1]:6.1f} ms")
    if not samples:
        return out
    lo = min(t for t, _ in samples)
    hi = max(t + x / 1000 for t, x in samples)
    in_run = [e for e in events if lo <= e["t"] <= hi]
    starts = [e["t"] for e in in_run]
    longest = max((e["ms"] for e in in_run), default=0.0) / 1000
    slow = [(t, x) for t, x in samples if x >= slow_ms]
    met: Counter = Counter()
    alone: Counter = Counter()
    unexplained = 0
    for t, x in slow:
        end = t + x / 1000
        i = bisect.bisect_left(starts, t - longest)
        hit = {cause(e) for e in in_run[i:bisect.bisect_right(starts, end)] if e["t"] + e["ms"] / 1000 >= t}
        if not hit:
            unexplained += 1
        met.update(hit)
        if len(hit) == 1:
            alone.update(hit)
    out.append(f"## {len(slow)} of {len(samples)} samples >= {slow_ms:g} ms; the stalls they met during their "
               f"flight (a sample may meet several; 'alone': the only one it met)")
    for c, n in met.most_common():
        out.append(f"  {c:<28} {n:>6} met  {alone[c]:>6} alone")
    out.append(f"  {'(no stall recorded)':<28} {unexplained:>6}")
    out.append(f"## the {top} longest stalls during the run")
    for e in sorted(in_run, key=lambda e: -e["ms"])[:top]:
        extra = (f"gen{e['gen']} cpu {e.get('cpu_ms')} ms, collected {e.get('collected')}" if e["kind"] == "gc"
                 else f"loop cpu {e.get('cpu_ms')} ms, process cpu {e.get('proc_cpu_ms')} ms")
        out.append(f"  +{e['t'] - lo:7.3f} s  {e['label']:<12} {e['kind']:<4} {e['ms']:7.1f} ms  {extra}")
        if e.get("stack"):
            out.append("      " + " <- ".join(reversed(e["stack"][-5:])))
    return out


if __name__ == "__main__":
    data = json.loads(open(sys.argv[2]).read())
    print("\n".join(explain([(ab, x) for _, x, ab in data], sys.argv[1], float(sys.argv[3]) if len(sys.argv) > 3 else 10.0)))
