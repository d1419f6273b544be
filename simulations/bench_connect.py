"""Workload W2 (Connect): U users x D devices on websockets, one command per user every P seconds.

    .venv/bin/python -m simulations.bench_connect [--users 1000] [--devices 3] [--period 2] [--seconds 20]
                                                  [--transfer-share 0.1] [--url URL --data-dir DIR] [--floor]
    (the same as: syncopate simulate connect --users 1000 --devices 3 --period 2 --seconds 20)
    10,000 users x 3 devices: --procs 3 --gateways 2 (see "Many sockets" below)

Reports p50/p99/max of command -> the new state received by ALL of that user's devices, and of
transfer -> the target device received a state in which it is active and playing; plus lost states
(a device that never got a state, or skipped a revision) and out-of-order pushes.
--floor first runs the floor of ../shared/bench/connect_floor (a bare aiohttp broadcast server, no
auth, no actors, no storage) with its own W2 client in this session, for comparison.
Targets on the 2-core machine: command p99 <= 15 ms, transfer p99 <= 25 ms, nothing lost or reordered.

Many sockets (--procs N): one process holds at most RLIMIT_NOFILE sockets (a hard 20,000 here), and
one source address reaches one destination port from at most the ephemeral range (32768-60999:
28,232 ports). So 30,000 device sockets need several load processes and several gateways (their
sockets: --gateways, sharing the port with SO_REUSEPORT). With --procs N this process starts the
server and N workers, each the W2 client of users/N users on its own source address (127.0.0.k+1),
sampling the same server processes; their load phases start at about the same time (their setups
take about as long). The report gives each worker's latencies and counts (and the worst worker's p99);
CPU per command is the server's CPU in the workers' common load window over every worker's
acknowledged player commands in it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

FLOOR = Path(os.environ.get("SYNCOPATE_CONNECT_FLOOR", Path(__file__).resolve().parents[2] / "shared" / "bench"
                            / "connect_floor"))


def run_floor(users: int, devices: int, period: float, seconds: float) -> dict | None:
    server, client = FLOOR / "floor_server.py", FLOOR / "w2_client.py"
    if not server.exists():
        print(f"no floor at {FLOOR}", file=sys.stderr)
        return None
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, str(server), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run([sys.executable, str(client), "--url", f"ws://127.0.0.1:{port}/ws", "--users",
                              str(users), "--devices", str(devices), "--period", str(period), "--seconds",
                              str(seconds)], capture_output=True, text=True, timeout=seconds + 300, check=False)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        return json.loads(line) if line else {"error": out.stderr[-500:]}
    finally:
        proc.terminate()
        proc.wait(10)


def server_cpu(res: dict) -> dict[str, float]:
    """The CPU seconds of each server process (not the load generator's) in a worker's window."""
    return {k: v["cpu_s"] for k, v in (res.get("processes") or {}).items() if v.get("server") and "cpu_s" in v}


def cpu_per_command(res: dict) -> list[str]:
    """CPU ms per acknowledged player command, per server process: the processes' CPU seconds (user +
    system, /proc) over the sampler's window, divided by the player commands acknowledged in that
    window. The window's heartbeats (one per device every 10 s) and refusals are part of the load, in
    the same proportion on both sides of a pair."""
    ops = res.get("ops_in_cpu_window") or {}
    n = sum(v for k, v in ops.items() if k.startswith("ack:player."))
    procs = server_cpu(res)
    if not n or not procs:
        return []
    lo, hi = res["cpu_window_s"]
    per = {k: s * 1000 / n for k, s in sorted(procs.items())}
    return [f"CPU per acknowledged player command ({n} in {hi - lo:.1f} s): "
            + ", ".join(f"{k} {ms:.3f} ms" for k, ms in per.items())
            + f"; server total {sum(per.values()):.3f} ms"]


def _bind_source(addr: str) -> None:
    """Every aiohttp connector of this (worker) process connects from `addr` (a loopback address of
    its own: a port range of its own towards the gateway's one port)."""
    import aiohttp
    init = aiohttp.TCPConnector.__init__

    def bound(self, *a, **kw):
        kw.setdefault("local_addr", (addr, 0))
        init(self, *a, **kw)

    aiohttp.TCPConnector.__init__ = bound


def worker(conf: dict) -> None:
    """One load process of --procs: its slice of the users against the given server; prints its
    latency samples, counts and CPU window as one JSON line."""
    from simulations import tune_gc
    tune_gc()
    logging.basicConfig(level=logging.WARNING)
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _bind_source(conf["source"])
    from simulations.harness import Target, run_scenario
    pids = conf["pids"]
    target = Target(url_fn=lambda: conf["url"], secret=conf["secret"], store=conf["store"],
                    resolve_pids=lambda: dict(pids))
    rep = asyncio.run(run_scenario("connect", target, conf["params"], seconds=conf["seconds"], out_dir=conf["out"],
                                   quiet=True, plots=False))
    res = rep["resources"]
    print(json.dumps({"w2": rep["w2"], "ok": rep["ok"], "convergence": rep["convergence"],
                      "cpu_window_s": res.get("cpu_window_s"),
                      "processes": res.get("processes"), "ops": res.get("ops_in_cpu_window"),
                      "cpu": cpu_per_command(res), "out": conf["out"]}))


def run_many(a, out: str) -> int:
    """--procs N: the server here, N worker processes of the load (see the module doc)."""
    from simulations.faults import FaultSpec
    from simulations.harness import OwnServer
    from simulations.resources import ray_server_pids
    own = OwnServer(store=a.store, faults=FaultSpec(), hosts=a.hosts, gateways=a.gateways).start()
    try:
        target = own.target()
        pids = ray_server_pids(own.server)
        per = [a.users // a.procs + (1 if i < a.users % a.procs else 0) for i in range(a.procs)]
        procs = []
        for i, n in enumerate(per):
            conf = {"url": target.url, "secret": target.secret, "store": target.store, "pids": pids,
                    "source": f"127.0.0.{i + 1}", "seconds": a.seconds, "out": f"{out}/worker-{i}",
                    "params": {"users": n, "devices": a.devices, "rate": 1.0 / a.period,
                               "transfer_share": a.transfer_share}}
            procs.append(subprocess.Popen([sys.executable, "-m", "simulations.bench_connect", "--worker",
                                           json.dumps(conf)], stdout=subprocess.PIPE, text=True))
        results = []
        for p in procs:
            stdout, _ = p.communicate()
            line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
            results.append(json.loads(line) if line.startswith("{") else {"error": f"worker exit {p.returncode}"})
    finally:
        own.stop()
    print(f"W2: {a.users} users x {a.devices} devices over {a.procs} load processes and {a.gateways} gateways, "
          f"one command per user every {a.period:g} s, {a.seconds:g} s")
    ok = True
    for i, r in enumerate(results):
        if "error" in r:
            ok = False
            print(f"worker {i}: {r['error']}")
            continue
        w2 = r["w2"]
        c, t = w2["command_to_all_devices_ms"], w2["transfer_to_playing_ms"]
        ok = ok and r["ok"]
        print(f"worker {i}: command n={c['count']} p50 {c['p50']} p99 {c['p99']} max {c['max']} ms; transfer "
              f"n={t['count']} p50 {t['p50']} p99 {t['p99']} max {t['max']} ms; lost {w2['lost_states']}, gaps "
              f"{w2['revision_gaps']}, out of order {w2['out_of_order']}, refused {w2['refused']}; converged "
              f"{r['convergence'].get('ok')}; cpu window {r['cpu_window_s']}")
        for line in r["cpu"]:
            if len(results) > 1:       # each worker sampled the whole server: its CPU served every worker
                line = line + " (the whole server's CPU over this worker's commands alone: per command, see below)"
            print(f"  worker {i} window: {line}")
    good = [r for r in results if "error" not in r]
    if good:
        print("worst worker: command p99 " + str(max(r["w2"]["command_to_all_devices_ms"]["p99"] or 0 for r in good))
              + " ms, transfer p99 " + str(max(r["w2"]["transfer_to_playing_ms"]["p99"] or 0 for r in good)) + " ms")
        # every worker sampled the same server processes: the CPU in one worker's window was spent on
        # every worker's commands in it (their windows overlap: same setup, started together)
        n = sum(sum(v for k, v in (r["ops"] or {}).items() if k.startswith("ack:player.")) for r in good)
        by_proc = [server_cpu(r) for r in good]
        cpu = [sum(b.values()) for b in by_proc]
        span = [r["cpu_window_s"][1] - r["cpu_window_s"][0] for r in good if r["cpu_window_s"]]
        if n and cpu and span:
            mean_cpu = sum(cpu) / len(cpu)
            per = {k: sum(b.get(k, 0.0) for b in by_proc) / len(by_proc) * 1000 / n
                   for k in sorted({k for b in by_proc for k in b})}
            print(f"server CPU per acknowledged player command, all workers: {mean_cpu * 1000 / n:.3f} ms "
                  f"({n} commands, {mean_cpu:.1f} CPU s in a mean window of {sum(span) / len(span):.1f} s): "
                  + ", ".join(f"{k} {ms:.3f} ms" for k, ms in per.items()))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(json.loads(argv[1]))
        return 0
    from simulations import tune_gc
    tune_gc()
    p = argparse.ArgumentParser(prog="python -m simulations.bench_connect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--period", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--transfer-share", type=float, default=0.1)
    p.add_argument("--url")
    p.add_argument("--data-dir")
    p.add_argument("--secret-file")
    p.add_argument("--store", default="sqlite", choices=("sqlite", "postgres", "tiered"))
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--gateways", type=int, default=1)
    p.add_argument("--procs", type=int, default=1, help="load processes (30,000 sockets need 2 or more)")
    p.add_argument("--out", default=None, help="report directory (default reports/bench-connect-TIMESTAMP)")
    p.add_argument("--floor", action="store_true", help="also run the floor server's W2 in this session")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from simulations.cli import _secret
    from simulations.faults import FaultSpec
    from simulations.harness import OwnServer, Target, run_scenario

    if a.procs > 1:
        return run_many(a, a.out or f"reports/bench-connect-{time.strftime('%Y%m%d-%H%M%S')}")
    floor = run_floor(a.users, a.devices, a.period, a.seconds) if a.floor else None
    own = None
    if a.url:
        target = Target.from_url(a.url, _secret(a))
    else:
        own = OwnServer(store=a.store, faults=FaultSpec(), hosts=a.hosts, gateways=a.gateways).start()
        target = own.target()
    out = a.out or f"reports/bench-connect-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        rep = asyncio.run(run_scenario("connect", target, {"users": a.users, "devices": a.devices,
                                                           "rate": 1.0 / a.period, "transfer_share": a.transfer_share},
                                       seconds=a.seconds, out_dir=out, quiet=a.quiet))
    finally:
        if own is not None:
            own.stop()
    w2 = rep["w2"]
    c, t = w2["command_to_all_devices_ms"], w2["transfer_to_playing_ms"]
    lines = [(f"W2: {a.users} users x {a.devices} devices, one command per user every {a.period:g} s, "
              f"{a.seconds:g} s, store {target.store}"), "",
             "| measure | count | p50 ms | p99 ms | max ms | target p99 |", "|---|---:|---:|---:|---:|---:|",
             f"| command -> all devices | {c['count']} | {c['p50']} | {c['p99']} | {c['max']} | 15 |",
             f"| transfer -> new device playing | {t['count']} | {t['p50']} | {t['p99']} | {t['max']} | 25 |"]
    if floor:
        lines.append(f"| floor (bare aiohttp broadcast) | {floor.get('completed')} | {floor.get('p50_ms')} | "
                     f"{floor.get('p99_ms')} | {floor.get('max_ms')} | |")
    conv = rep["convergence"]
    lines += ["", (f"lost states {w2['lost_states']}, revision gaps {w2['revision_gaps']}, out of order "
                   f"{w2['out_of_order']}, transfers not playing {w2['transfers_not_playing']}; converged: "
                   f"{conv.get('ok')}; setup revision gaps (devices registering together) "
                   f"{conv.get('setup_revision_gaps')}; refusals {w2['refused']}; server CPU mean "
                   f"{rep['resources'].get('server_cpu_pct_mean')} %; report {out}/report.md")]
    lines += cpu_per_command(rep["resources"])
    print("\n".join(lines))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
