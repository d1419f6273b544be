"""What a simulation measured, and the report it writes: report.json, report.md and PNG plots.

`Recorder` is filled while a scenario runs (every client of the process shares one):

    rec.ok("ack:library.save", result)        # an acknowledged request: latency and completion time
    rec.latency("fanout:playlist", ms)         # any other latency sample (push delivery, W2 command)
    rec.error("library.save", "HOST_UNAVAILABLE", retried=True)
    rec.expect("push:library", 3); rec.delivered("push:library")
    rec.mark("fault", kind="kill_host", ...)   # shown as vertical lines in the plots

`build_report` turns it (plus the scenario's convergence check, the faults and the resource
samples) into one dict; `write_report` writes it as JSON, Markdown, and PNG plots (matplotlib):

  latency.png     p50 / p95 / p99 / max per second, per metric, faults marked
  throughput.png  completions per second per metric, and errors per second
  resources.png   RSS and CPU of each of the server's processes (and the load generator's)
"""
from __future__ import annotations

import json
import math
import os
import time
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

SCHEMA = "syncopate.simulation/1"


def pct(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(p * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(values: list[float], duration_s: float | None = None) -> dict:
    xs = sorted(values)
    out = {"count": len(xs), "p50": _r(pct(xs, 0.50)), "p95": _r(pct(xs, 0.95)), "p99": _r(pct(xs, 0.99)),
           "max": _r(xs[-1] if xs else None), "mean": _r(sum(xs) / len(xs) if xs else None)}
    if duration_s:
        out["per_s"] = _r(len(xs) / duration_s)
    return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


class Samples:
    """(t_done, ms) pairs, packed: 16 bytes a sample instead of a tuple of two floats (~112). A
    30-minute soak records millions; as tuples they were the load generator's steady memory growth.
    Iterates, indexes and measures like the list of pairs it replaces."""

    __slots__ = ("_a",)

    def __init__(self, pairs=()) -> None:
        self._a = array("d")
        for t, ms in pairs:
            self._a.extend((t, ms))

    def append(self, pair: tuple[float, float]) -> None:
        self._a.extend(pair)

    def __len__(self) -> int:
        return len(self._a) // 2

    def __iter__(self):
        a = self._a
        return zip(a[0::2], a[1::2])

    def __getitem__(self, i: int) -> tuple[float, float]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._a[2 * i], self._a[2 * i + 1]


class Recorder:
    def __init__(self, bucket_s: float = 1.0) -> None:
        self.t0 = time.perf_counter()
        self.wall0 = time.time()
        self.bucket_s = bucket_s
        self.lat: dict[str, Samples] = defaultdict(Samples)    # name -> [(t_done, ms)]
        self.errors: list[tuple[float, str, str, bool]] = []                   # (t, op, code, retried)
        self.counters: Counter = Counter()
        self.deliveries: dict[str, list[int]] = defaultdict(lambda: [0, 0])    # name -> [expected, got]
        self.marks: list[dict] = []
        self.phase_t: dict[str, float] = {}

    # -- clock ---------------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the recorder started (perf_counter based)."""
        return time.perf_counter() - self.t0

    def rel(self, perf_t: float) -> float:
        return perf_t - self.t0

    def restart_clock(self) -> None:
        """The load phase starts now: t = 0 in every timeline."""
        self.t0 = time.perf_counter()
        self.wall0 = time.time()

    # -- samples -------------------------------------------------------------------------------
    def ok(self, name: str, res: Any) -> None:
        """An acknowledged request (a client.Result)."""
        self.lat[name].append((res.done - self.t0, res.ms))

    def latency(self, name: str, ms: float, t_done: float | None = None) -> None:
        """t_done: perf_counter of completion (default now)."""
        t = (time.perf_counter() if t_done is None else t_done) - self.t0
        self.lat[name].append((t, ms))

    def error(self, op: str, code: str, *, retried: bool = False, t: float | None = None) -> None:
        self.errors.append(((time.perf_counter() if t is None else t) - self.t0, op, code, retried))

    def retry_hook(self, op: str, err) -> None:
        """For SimClient(on_retry=...): every retried attempt is an error sample (retried=True)."""
        self.error(op, err.code, retried=True)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def expect(self, name: str, n: int = 1) -> None:
        self.deliveries[name][0] += n

    def delivered(self, name: str, n: int = 1) -> None:
        self.deliveries[name][1] += n

    def mark(self, kind: str, **info) -> dict:
        m = {"t": round(self.now(), 3), "kind": kind, **info}
        self.marks.append(m)
        return m

    # -- derived -------------------------------------------------------------------------------
    def duration(self) -> float:
        ends = [s[-1][0] for s in self.lat.values() if s]
        return max([self.now()] + ends) if ends else self.now()

    def timeline(self, name: str, until: float | None = None) -> list[dict]:
        samples = self.lat.get(name, [])
        if not samples:
            return []
        b = self.bucket_s
        buckets: dict[int, list[float]] = defaultdict(list)
        for t, ms in samples:
            buckets[int(max(t, 0) // b)].append(ms)
        last = int((until if until is not None else max(t for t, _ in samples)) // b)
        out = []
        for i in range(last + 1):
            xs = sorted(buckets.get(i, []))
            out.append({"t": round(i * b, 3), "count": len(xs), "per_s": round(len(xs) / b, 2),
                        "p50": _r(pct(xs, .5)), "p95": _r(pct(xs, .95)), "p99": _r(pct(xs, .99)),
                        "max": _r(xs[-1] if xs else None)})
        return out

    def error_timeline(self, until: float) -> list[dict]:
        b = self.bucket_s
        buckets: Counter = Counter(int(max(t, 0) // b) for t, *_ in self.errors)
        return [{"t": round(i * b, 3), "errors": buckets.get(i, 0)} for i in range(int(until // b) + 1)]


# -- recovery after a fault ---------------------------------------------------------------------------
def recovery(rec: Recorder, fault_t: float, restored_t: float | None = None, *, names: list[str] | None = None,
             window_s: float = 120.0) -> dict:
    """How long the service was degraded after a fault at `fault_t` (seconds on the recorder clock).

    recovered_at = the later of (a) the last error (retried attempts included) in the window after
    the fault, and (b) the completion of the slowest request that was in flight when the fault hit
    (a request that stalled and then succeeded without an error). It counts as recovered once some
    request sent after recovered_at's last error completed. `restored_t`: when the fault itself
    ended (PostgreSQL reachable again), if it has a duration."""
    names = names or [n for n in rec.lat if n.startswith("ack:")] or list(rec.lat)
    errs = [t for t, _op, _code, _r in rec.errors if fault_t <= t <= fault_t + window_s]
    last_err = max(errs) if errs else None
    # requests in flight at the fault: sent before it, completed after it
    inflight_done = [t for n in names for t, ms in rec.lat.get(n, ()) if t - ms / 1000.0 <= fault_t <= t]
    base = [ms for n in names for t, ms in rec.lat.get(n, ()) if t < fault_t]
    base.sort()
    normal_p99 = pct(base, .99) or 0.0
    slow = [t for n in names for t, ms in rec.lat.get(n, ())
            if t - ms / 1000.0 <= fault_t + 1.0 and t >= fault_t and ms > max(50.0, 5 * normal_p99)]
    candidates = [x for x in [last_err] + inflight_done[-1:] + slow if x is not None]
    recovered_at = max(candidates) if candidates else fault_t
    after = [t for n in names for t, ms in rec.lat.get(n, ()) if t - ms / 1000.0 >= (last_err or fault_t)]
    out = {"fault_t": round(fault_t, 3), "errors_after_fault": len(errs),
           "codes": dict(Counter(code for t, _op, code, _r in rec.errors if fault_t <= t <= fault_t + window_s)),
           "last_error_t": _r(last_err), "recovered": bool(after),
           "recovery_s": _r(recovered_at - fault_t) if after else None,
           "first_success_after_t": _r(min(after)) if after else None}
    if restored_t is not None:
        out["restored_t"] = round(restored_t, 3)
        out["recovery_after_restore_s"] = _r(max(0.0, recovered_at - restored_t)) if after else None
    return out


# -- the report ---------------------------------------------------------------------------------------
def build_report(rec: Recorder, *, scenario: str, params: dict, target: dict, convergence: dict,
                 faults: list[dict] | None = None, resources: dict | None = None, extra: dict | None = None,
                 load_seconds: float | None = None) -> dict:
    duration = load_seconds or rec.duration()
    latency = {n: summarize([ms for _, ms in s], duration) for n, s in sorted(rec.lat.items())}
    until = rec.duration()
    timelines = {n: rec.timeline(n, until) for n in sorted(rec.lat)}
    errs_final = [e for e in rec.errors if not e[3]]
    errors = {"total": len(errs_final), "retried_attempts": sum(1 for e in rec.errors if e[3]),
              "by_code": dict(Counter(e[2] for e in errs_final).most_common()),
              "retried_by_code": dict(Counter(e[2] for e in rec.errors if e[3]).most_common()),
              "by_op": dict(Counter(f"{e[1]}:{e[2]}" for e in rec.errors).most_common()),
              "timeline": rec.error_timeline(until)}
    delivery = {n: {"expected": e, "delivered": d, "ratio": _r(d / e, 6) if e else None}
                for n, (e, d) in sorted(rec.deliveries.items())}
    throughput = {n: v["per_s"] for n, v in latency.items()}
    acked = sum(v["count"] for n, v in latency.items() if n.startswith("ack:"))
    report = {
        "schema": SCHEMA,
        "scenario": scenario,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.wall0)),
        "duration_s": _r(duration),
        "params": params,
        "target": target,
        "throughput": {"acked_per_s": _r(acked / duration) if duration else None, "by_metric": throughput},
        "latency_ms": latency,
        "timeline": timelines,
        "delivery": delivery,
        "convergence": convergence,
        "errors": errors,
        "counters": dict(rec.counters),
        "faults": faults or [],
        "marks": rec.marks,
        "resources": resources or {},
        "machine": {"cpus": os.cpu_count(), "note": "load generator and server share this machine"},
    }
    if extra:
        report.update(extra)
    report["ok"] = bool(convergence.get("ok")) and all(
        f.get("acked_missing_after_recovery", 0) == 0 and "error" not in f
        and (f.get("recovery") or {}).get("recovered", True) for f in report["faults"])
    return report


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.2f}" if abs(x) < 1e6 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(report: dict) -> str:
    L: list[str] = []
    L.append(f"# Simulation `{report['scenario']}`: {'OK' if report.get('ok') else 'FAILED'}")
    L.append("")
    L.append(f"Started {report['started_at']}, load phase {_fmt(report['duration_s'])} s. "
             f"Target: {report['target'].get('url', '?')} ({report['target'].get('store', '?')}).")
    L.append("")
    L.append("Parameters: " + ", ".join(f"`{k}={v}`" for k, v in report["params"].items()))
    L.append("")
    L.append("## Latency (ms) and throughput")
    L.append("")
    L.append("| metric | count | per s | p50 | p95 | p99 | max |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for n, v in report["latency_ms"].items():
        L.append(f"| {n} | {_fmt(v['count'])} | {_fmt(v.get('per_s'))} | {_fmt(v['p50'])} | {_fmt(v['p95'])} "
                 f"| {_fmt(v['p99'])} | {_fmt(v['max'])} |")
    L.append("")
    L.append(f"Acknowledged requests per second: {_fmt(report['throughput']['acked_per_s'])}.")
    L.append("")
    if report["delivery"]:
        L.append("## Delivery")
        L.append("")
        L.append("| stream | expected | delivered | ratio |")
        L.append("|---|---:|---:|---:|")
        for n, v in report["delivery"].items():
            L.append(f"| {n} | {_fmt(v['expected'])} | {_fmt(v['delivered'])} | {_fmt(v['ratio'])} |")
        L.append("")
    c = report["convergence"]
    L.append("## Convergence")
    L.append("")
    L.append(f"**{'converged' if c.get('ok') else 'NOT converged'}**: " +
             ", ".join(f"{k} = {_fmt(v)}" for k, v in c.items() if k not in ("ok", "details", "missing_examples")))
    if c.get("missing_examples"):
        L.append("")
        L.append("Missing (examples): " + "; ".join(str(x) for x in c["missing_examples"][:10]))
    L.append("")
    if report["faults"]:
        L.append("## Faults")
        L.append("")
        L.append("| fault | at s | lasted s | acked before | missing after recovery | errors after | recovery s |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for f in report["faults"]:
            rcv = f.get("recovery", {})
            L.append(f"| {f['kind']} | {_fmt(f.get('at_s'))} | {_fmt(f.get('duration_s'))} | "
                     f"{_fmt(f.get('acked_before'))} | {_fmt(f.get('acked_missing_after_recovery'))} | "
                     f"{_fmt(rcv.get('errors_after_fault'))} | {_fmt(rcv.get('recovery_s'))} |")
        L.append("")
    e = report["errors"]
    L.append("## Errors")
    L.append("")
    L.append(f"Final (after retries): {e['total']}; retried attempts: {e['retried_attempts']}.")
    if e["by_code"] or e["retried_by_code"]:
        L.append("")
        L.append("| code | final | retried attempts |")
        L.append("|---|---:|---:|")
        for code in sorted(set(e["by_code"]) | set(e["retried_by_code"])):
            L.append(f"| {code} | {e['by_code'].get(code, 0)} | {e['retried_by_code'].get(code, 0)} |")
    L.append("")
    res = report.get("resources") or {}
    if res.get("processes"):
        L.append("## Resources")
        L.append("")
        L.append("| process | pid(s) | RSS mean MB | RSS max MB | CPU mean % | CPU max % |")
        L.append("|---|---|---:|---:|---:|---:|")
        for label, v in res["processes"].items():
            L.append(f"| {label} | {v.get('pids')} | {_fmt(v['rss_mb_mean'])} | {_fmt(v['rss_mb_max'])} | "
                     f"{_fmt(v['cpu_pct_mean'])} | {_fmt(v['cpu_pct_max'])} |")
        L.append("")
        if res.get("server_cpu_pct_mean") is not None:
            L.append(f"Server processes together: CPU mean {_fmt(res['server_cpu_pct_mean'])} % "
                     f"(of one core), RSS max {_fmt(res.get('server_rss_mb_max'))} MB.")
            L.append("")
    if report.get("abuse"):
        L += abuse_markdown(report)
    for key in ("comparison", "bench", "notes"):
        if key in report and isinstance(report[key], str):
            L.append(report[key])
            L.append("")
    if report.get("comparison_table"):
        L.append("## Comparison")
        L.append("")
        L.append(report["comparison_table"])
        L.append("")
    if report.get("plots"):
        L.append("## Plots")
        L.append("")
        for p in report["plots"]:
            L.append(f"![{p}]({p})")
        L.append("")
    return "\n".join(L)


# -- the abuse scenario's block ----------------------------------------------------------------------------
def rss_by_phase(report: dict) -> dict:
    """Max RSS (MB) of every sampled process before the attacks and during them (abuse block times)."""
    ab = report.get("abuse") or {}
    start, end = ab.get("attack_start_s"), ab.get("attack_end_s")
    out: dict[str, dict] = {}
    for s in (report.get("resources") or {}).get("samples") or []:
        phase = "without_attack" if start is None or s["t"] < start else \
            "with_attack" if end is None or s["t"] <= end else "after"
        row = out.setdefault(s["label"], {})
        row[phase] = max(row.get(phase, 0.0), s["rss_mb"])
    return out


def abuse_lines(report: dict) -> list[str]:
    """The abuse block in a few lines: legitimate latency without and with the attack, each attack."""
    ab = report["abuse"]
    L = []
    for phase in ("without_attack", "with_attack"):
        v = ab["legit"][phase]
        L.append(f"legit {phase:15s} n={v['count']:<6} p50={v['p50']} p99={v['p99']} max={v['max']} "
                 f"failed={v['failed']} retried={v['retried_attempts']}")
    for a in ab["attacks"]:
        what = a.get("skipped") or a.get("error") or \
            f"errors={a.get('errors')} closes={sorted(set(map(str, a.get('closes', []))))} timings={a.get('timings_ms')} " \
            f"recovery_s={a.get('recovery_s')}"
        L.append(f"attack {a['name']:24s} {what}"[:200])
    for label, row in rss_by_phase(report).items():
        L.append(f"rss max MB {label:24s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    after = ab["limit_metrics"].get("after") or {}
    L.append(f"limit metrics: {len(after)}" + ("" if after else " (the server exports none)"))
    return L


def abuse_markdown(report: dict) -> list[str]:
    ab = report["abuse"]
    L = ["## Abuse", "",
         f"Legitimate traffic alone for {_fmt(ab['baseline_s'])} s, then the attackers one after another "
         f"({_fmt(ab['attack_start_s'])} s to {_fmt(ab['attack_end_s'])} s).", "",
         "| legitimate requests | count | p50 ms | p95 ms | p99 ms | max ms | failed | retried attempts |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [("without the attack", ab["legit"]["without_attack"]), ("with the attack", ab["legit"]["with_attack"])]
    rows += [(f"during {n}", v) for n, v in ab["legit"]["per_attack"].items()]
    for label, v in rows:
        L.append(f"| {label} | {_fmt(v['count'])} | {_fmt(v['p50'])} | {_fmt(v['p95'])} | {_fmt(v['p99'])} | "
                 f"{_fmt(v['max'])} | {_fmt(v['failed'])} | {_fmt(v['retried_attempts'])} |")
    L += ["", "| attack | sent | answered | errors | closes | timings ms | server answers again after s | other |",
          "|---|---:|---:|---|---|---|---:|---|"]
    for a in ab["attacks"]:
        if "skipped" in a or "error" in a:
            L.append(f"| {a['name']} | | | | | | {_fmt(a.get('recovery_s'))} | {a.get('skipped') or a.get('error')} |")
            continue
        L.append(f"| {a['name']} | {a['sent']} | {a['answered']} | {a['errors'] or ''} | {a['closes'] or ''} | "
                 f"{a['timings_ms'] or ''} | {_fmt(a.get('recovery_s'))} | {str(a['counts'])[:300].replace('|', '/')} |")
    phases = rss_by_phase(report)
    if phases:
        L += ["", "| process | RSS max MB without the attack | with the attack | after |", "|---|---:|---:|---:|"]
        for label, row in phases.items():
            L.append(f"| {label} | {_fmt(row.get('without_attack'))} | {_fmt(row.get('with_attack'))} | "
                     f"{_fmt(row.get('after'))} |")
    L += ["", "Budget and limit metrics (/metrics names holding budget, limit, refused, dropped, rejected, "
          "closed or rate):", ""]
    before, after = ab["limit_metrics"].get("before") or {}, ab["limit_metrics"].get("after") or {}
    if not before and not after:
        L.append("none exported by this server.")
    else:
        L += ["| metric | before | after |", "|---|---:|---:|"]
        for k in sorted(set(before) | set(after)):
            L.append(f"| `{k}` | {_fmt(before.get(k))} | {_fmt(after.get(k))} |")
    L.append("")
    return L


def plot(report: dict, out: Path) -> list[str]:
    """Write the PNG plots; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    marks = [m for m in report.get("marks", []) if m.get("kind") in ("fault", "fault_end", "storm")]

    def vlines(ax):
        for m in marks:
            ax.axvline(m["t"], color="red" if m["kind"] != "fault_end" else "green", ls="--", lw=0.8)
            ax.text(m["t"], ax.get_ylim()[1], " " + str(m.get("fault", m.get("name", m["kind"]))),
                    color="red", fontsize=7, va="top", rotation=90)

    tl = report.get("timeline", {})
    names = [n for n in tl if tl[n]][:6]
    if names:
        fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.6 * len(names)), squeeze=False, sharex=True)
        for ax, n in zip(axes[:, 0], names):
            pts = tl[n]
            ts = [p["t"] for p in pts]
            for q, style in (("p50", "-"), ("p95", "-"), ("p99", "-"), ("max", ":")):
                ys = [p[q] if p[q] is not None else float("nan") for p in pts]
                ax.plot(ts, ys, style, label=q, lw=1)
            ax.set_ylabel("ms")
            ax.set_title(n, fontsize=9)
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            vlines(ax)
            ax.legend(fontsize=7, loc="upper right")
        axes[-1, 0].set_xlabel("seconds into the run")
        fig.suptitle(f"{report['scenario']}: latency per second")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=90)
        plt.close(fig)
        files.append("latency.png")

        fig, ax = plt.subplots(figsize=(10, 3.5))
        for n in tl:
            if tl[n]:
                ax.plot([p["t"] for p in tl[n]], [p["per_s"] for p in tl[n]], lw=1, label=n)
        et = report["errors"].get("timeline", [])
        if any(p["errors"] for p in et):
            ax.plot([p["t"] for p in et], [p["errors"] / 1.0 for p in et], "r:", lw=1, label="errors/s")
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("per second")
        ax.grid(True, alpha=0.3)
        vlines(ax)
        ax.legend(fontsize=7, loc="upper right")
        fig.suptitle(f"{report['scenario']}: throughput")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=90)
        plt.close(fig)
        files.append("throughput.png")

    samples = (report.get("resources") or {}).get("samples") or []
    if samples:
        by: dict[str, list] = defaultdict(list)
        for s in samples:
            by[s["label"]].append(s)
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        for label, ss in sorted(by.items()):
            a1.plot([s["t"] for s in ss], [s["rss_mb"] for s in ss], lw=1, label=label)
            a2.plot([s["t"] for s in ss], [s["cpu_pct"] for s in ss], lw=1, label=label)
        a1.set_ylabel("RSS MB")
        a2.set_ylabel("CPU % (100 = one core)")
        a2.set_xlabel("seconds into the run")
        for a in (a1, a2):
            a.grid(True, alpha=0.3)
            vlines(a)
            a.legend(fontsize=7, loc="upper right")
        fig.suptitle(f"{report['scenario']}: server processes")
        fig.tight_layout()
        fig.savefig(out / "resources.png", dpi=90)
        plt.close(fig)
        files.append("resources.png")
    return files


def write_report(report: dict, out_dir: str | Path, *, plots: bool = True) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        try:
            report["plots"] = plot(report, out)
        except Exception as exc:  # noqa: BLE001 - a plot must never lose the measurements
            report["plots"] = []
            report.setdefault("warnings", []).append(f"plots failed: {type(exc).__name__}: {exc}")
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(markdown(report))
    return out
