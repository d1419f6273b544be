"""Is memory flat under a constant load? Reads a simulation report (report.json) and fits, per server
process, a least-squares line to its RSS after warm-up: the slope in MB per hour is the verdict.

    .venv/bin/python -m simulations.soak REPORT_DIR_OR_JSON [--warmup-s 300] [--max-mb-per-hour 10]

The soak itself is an ordinary scenario run for long enough with a fixed population, e.g.
`syncopate simulate mixed --users 500 --rate 1 --seconds 1800` (and `--kill-host-at 900` for the
same with one host killed in the middle: the restarted host's process is a new pid, so its line
starts at the restart; samples from the first `--warmup-s` after any (re)start are left out).
Exit status 0 when every process's slope is within the bound, 1 otherwise. The verdict is on RSS;
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
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


def analyse(report: dict, warmup_s: float) -> list[dict]:
    by: dict[tuple[str, str], list[tuple[float, float, float | None]]] = {}
    for s in (report.get("resources") or {}).get("samples") or []:
        if float(s["rss_mb"]) <= 0:
            continue                  # a process sampled as it died (a killed host): no memory to fit
        anon = s.get("anon_mb")
        by.setdefault((s["label"], str(s.get("pids"))), []).append(
            (float(s["t"]), float(s["rss_mb"]), float(anon) if anon is not None else None))
    rows = []
    for (label, pids), pts in sorted(by.items()):
        pts.sort()
        start = pts[0][0]
        steady = [p for p in pts if p[0] - start >= warmup_s]
        if len(steady) < 10:
            continue
        rss = [(t, v) for t, v, _ in steady]
        anon = [(t, a) for t, _, a in steady if a is not None]
        rows.append({"process": label, "pids": pids, "from_s": round(steady[0][0]), "to_s": round(steady[-1][0]),
                     "rss_mb_first": round(rss[0][1], 1), "rss_mb_last": round(rss[-1][1], 1),
                     "rss_mb_max": round(max(v for _, v in rss), 1),
                     "slope_mb_per_hour": round(fit(rss) * 3600, 2),
                     # the heap alone (RSS less file-backed pages): None for reports without it
                     "anon_slope_mb_per_hour": round(fit(anon) * 3600, 2) if len(anon) == len(rss) else None})
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
    ap.add_argument("--max-mb-per-hour", type=float, default=10.0)
    a = ap.parse_args(argv)
    path = Path(a.report)
    if path.is_dir():
        path = path / "report.json"
    report = json.loads(path.read_text())
    rows = analyse(report, a.warmup_s)
    print("| process | pids | window (s) | RSS first -> last MB | max MB | slope MB/h | anonymous (heap) slope MB/h |")
    print("|---|---|---|---|---:|---:|---:|")
    ok = bool(rows)
    for r in rows:
        ok = ok and abs(r["slope_mb_per_hour"]) <= a.max_mb_per_hour
        print(f"| {r['process']} | {r['pids']} | {r['from_s']}-{r['to_s']} | {r['rss_mb_first']} -> {r['rss_mb_last']} | "
              f"{r['rss_mb_max']} | {r['slope_mb_per_hour']} | {r['anon_slope_mb_per_hour']} |")
    data = store_growth(report, a.warmup_s)
    if data is not None:
        print(f"store data on disk (not in the verdict): {data['mb_first']} -> {data['mb_last']} MB over "
              f"{data['from_s']}-{data['to_s']} s, {data['slope_mb_per_hour']} MB/h")
    print(f"verdict: {'flat' if ok else 'NOT flat'} (bound {a.max_mb_per_hour} MB/h after {a.warmup_s:g} s of warm-up)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
