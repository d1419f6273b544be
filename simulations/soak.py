"""Is memory flat under a constant load? Reads a simulation report (report.json) and fits, per server
process, a least-squares line to its RSS after warm-up: the slope in MB per hour is the verdict.

    .venv/bin/python -m simulations.soak REPORT_DIR_OR_JSON [--warmup-s 300] [--settle-s 120]
        [--min-window-s 600] [--max-mb-per-hour 10]

The soak itself is an ordinary scenario run for long enough with a fixed population, e.g.
`syncopate simulate mixed --users 500 --rate 1 --seconds 1800` (and `--kill-host-at 900` for the
same with one host killed in the middle: the restarted host's process is a new pid, so its line
starts at the restart; samples from the first `--warmup-s` after any (re)start are left out).
A fault is a step, not a slope: after a host is killed the survivor holds the killed host's entities
too, and the gateway the reconnected sockets' new state (+21 MB and +4 MB in the soak of
docs/performance.md). So samples from the `--settle-s` after every fault of the report are left
out, the samples between faults are segments, and the slope is fitted within the segments (one
slope, an intercept of each: the pooled least-squares slope); the step between segments is printed
beside it, and so is the slope of one line through everything, for comparison.
The verdict is on the server's processes (the report marks them); the load generator's line is
printed apart (it keeps every latency it measured). A process whose fitted samples span less than
`--min-window-s` is printed but not judged: over a few minutes a slope is mostly noise (±0.5 MB
over 300 s reads as ±6 MB/h), e.g. a host restarted late in the run.
Exit status 0 when no judged process grows faster than the bound, 1 otherwise (a falling line
passes: a survivor handing entities back to a restarted host shrinks). The verdict is on RSS;
beside it, the slope of the anonymous part alone (RSS less file-backed pages: the heap, where a
leak shows) tells a growing heap from mapped files being paged in.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fit(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (t seconds, MB): MB per second."""
    return fit_segments([points])[0]


def fit_segments(segments: list[list[tuple[float, float]]]) -> tuple[float, list[float]]:
    """One slope for several segments, each with its own intercept (the pooled within-segment
    least-squares slope, MB per second), and the step between consecutive segments (MB): the
    difference of their fitted lines' intercepts."""
    segs = [s for s in segments if s]
    num = var = 0.0
    means = []
    for pts in segs:
        mt = sum(t for t, _ in pts) / len(pts)
        mv = sum(v for _, v in pts) / len(pts)
        means.append((mt, mv))
        num += sum((t - mt) * (v - mv) for t, v in pts)
        var += sum((t - mt) ** 2 for t, _ in pts)
    b = num / var if var else 0.0
    icept = [mv - b * mt for mt, mv in means]
    return b, [icept[k + 1] - icept[k] for k in range(len(icept) - 1)]


def fault_times(report: dict) -> list[float]:
    return sorted(float(f["at_s"]) for f in report.get("faults") or [] if f.get("at_s") is not None)


def analyse(report: dict, warmup_s: float, settle_s: float = 120.0) -> list[dict]:
    faults = fault_times(report)
    by: dict[tuple[str, str], list[tuple[float, float, float | None]]] = {}
    for s in (report.get("resources") or {}).get("samples") or []:
        if float(s["rss_mb"]) <= 0:
            continue                  # a process sampled as it died (a killed host): no memory to fit
        anon = s.get("anon_mb")
        by.setdefault((s["label"], str(s.get("pids"))), []).append(
            (float(s["t"]), float(s["rss_mb"]), float(anon) if anon is not None else None))
    procs = (report.get("resources") or {}).get("processes") or {}
    rows = []
    for (label, pids), pts in sorted(by.items()):
        pts.sort()
        start = pts[0][0]
        steady = [p for p in pts if p[0] - start >= warmup_s
                  and not any(f <= p[0] < f + settle_s for f in faults)]
        if len(steady) < 10:
            continue
        # segments: the samples between consecutive faults
        seg_of = [sum(1 for f in faults if f <= p[0]) for p in steady]
        segs_rss: dict[int, list] = {}
        segs_anon: dict[int, list] = {}
        for k, (t, v, a) in zip(seg_of, steady):
            segs_rss.setdefault(k, []).append((t, v))
            if a is not None:
                segs_anon.setdefault(k, []).append((t, a))
        slope, steps = fit_segments([segs_rss[k] for k in sorted(segs_rss)])
        rss = [(t, v) for t, v, _ in steady]
        anon_n = sum(len(v) for v in segs_anon.values())
        anon_slope = fit_segments([segs_anon[k] for k in sorted(segs_anon)])[0] if anon_n == len(rss) else None
        rows.append({"process": label, "pids": pids, "from_s": round(steady[0][0]), "to_s": round(steady[-1][0]),
                     "server": bool((procs.get(label) or {}).get("server", True)),
                     "span_s": round(sum(seg[-1][0] - seg[0][0] for seg in segs_rss.values())),
                     "segments": len(segs_rss),
                     "rss_mb_first": round(rss[0][1], 1), "rss_mb_last": round(rss[-1][1], 1),
                     "rss_mb_max": round(max(v for _, v in rss), 1),
                     "slope_mb_per_hour": round(slope * 3600, 2),
                     "steps_mb": [round(x, 1) for x in steps],
                     "one_line_mb_per_hour": round(fit(rss) * 3600, 2),
                     # the heap alone (RSS less file-backed pages): None for reports without it
                     "anon_slope_mb_per_hour": round(anon_slope * 3600, 2) if anon_slope is not None else None})
    return rows


def store_growth(report: dict, warmup_s: float) -> dict | None:
    """The store's size on disk over the same window: what the data grew by (not a process)."""
    pts = sorted((float(s["t"]), float(s["mb"])) for s in (report.get("resources") or {}).get("store_samples") or [])
    if not pts:
        return None
    steady = [(t, v) for t, v in pts if t - pts[0][0] >= warmup_s]
    if len(steady) < 2:
        return None
    return {"from_s": round(steady[0][0]), "to_s": round(steady[-1][0]), "mb_first": round(steady[0][1], 1),
            "mb_last": round(steady[-1][1], 1), "slope_mb_per_hour": round(fit(steady) * 3600, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--warmup-s", type=float, default=300.0)
    ap.add_argument("--settle-s", type=float, default=120.0,
                    help="seconds after each fault left out of the fit (the step is not growth)")
    ap.add_argument("--min-window-s", type=float, default=600.0,
                    help="a process whose fitted samples span less than this is printed, not judged")
    ap.add_argument("--max-mb-per-hour", type=float, default=10.0)
    a = ap.parse_args(argv)
    path = Path(a.report)
    if path.is_dir():
        path = path / "report.json"
    report = json.loads(path.read_text())
    rows = analyse(report, a.warmup_s, a.settle_s)
    faults = fault_times(report)
    if faults:
        print(f"faults at {', '.join(f'{f:g}' for f in faults)} s: {a.settle_s:g} s after each left out; "
              "the slope is fitted within the segments between them")
    print("| process | pids | window (s) | segments | RSS first -> last MB | max MB | slope MB/h | step at a fault MB "
          "| one line through all MB/h | anonymous (heap) slope MB/h | judged |")
    print("|---|---|---|---:|---|---:|---:|---|---:|---:|---|")
    judged = [r for r in rows if r["server"] and r["span_s"] >= a.min_window_s]
    # the bound is on growth: a falling line (a host handing entities back to a restarted one) passes
    ok = bool(judged) and all(r["slope_mb_per_hour"] <= a.max_mb_per_hour for r in judged)
    for r in rows:
        verdict = ("yes" if r in judged else "no: not a server process" if not r["server"]
                   else f"no: {r['span_s']} s of samples")
        steps = ", ".join(f"{x:+g}" for x in r["steps_mb"]) or "-"
        print(f"| {r['process']} | {r['pids']} | {r['from_s']}-{r['to_s']} | {r['segments']} | "
              f"{r['rss_mb_first']} -> {r['rss_mb_last']} | {r['rss_mb_max']} | {r['slope_mb_per_hour']} | {steps} | "
              f"{r['one_line_mb_per_hour']} | {r['anon_slope_mb_per_hour']} | {verdict} |")
    data = store_growth(report, a.warmup_s)
    if data is not None:
        print(f"store data on disk (not in the verdict): {data['mb_first']} -> {data['mb_last']} MB over "
              f"{data['from_s']}-{data['to_s']} s, {data['slope_mb_per_hour']} MB/h")
    print(f"verdict: {'flat' if ok else 'NOT flat'} ({len(judged)} server processes judged; bound "
          f"{a.max_mb_per_hour} MB/h after {a.warmup_s:g} s of warm-up"
          f"{f', {a.settle_s:g} s after a fault' if faults else ''})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
