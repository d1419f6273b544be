"""The Yjs fan-out workload of ../shared/bench/peers, against this server and the peer servers, in one run.

    .venv/bin/python -m simulations.peers [--docs 20 --clients 10 --rate 5 --seconds 10]
                                          [--peers yws,hocuspocus[,pycrdt]] [--url URL --data-dir DIR]
    (also: syncopate simulate peers ..., syncopate bench peers ...)

The peers (y-websocket 1.5 reference server on 1234, Hocuspocus on 1235, pycrdt-websocket on 1236)
come from ../shared/bench/peers/peers.sh: installed into $PEERS_DIR (default $TMPDIR/fanout-peers)
if missing, started if not listening, stopped afterwards if this command started them.

One change to the client, applied to a copy at run time, because this server validates what Yjs
clients write (issue 3): fanout.mjs draws random track uris, and this server refuses a uri that is
not in its catalog (issue 2: "a well-formed one that is not in the catalog is refused where it is
used"), which would correct every entry away (0 delivered). The copy draws its uris from the
server's catalog (a file named by FANOUT_URIS); everything else (Yjs clients, providers, schema,
timing, measurement) is the shared client unchanged, and the SAME copy runs against every server. Against this server: D playlists created by one user, who is every
client's token (`--query ?token=`), entries added_by that user (`--user`), `--schema playlist`.

W1 = --docs 20 --clients 10 --rate 5 --seconds 10 (200 clients, 1,000 edits/s, 9,000 deliveries/s).
Unlike the peers, every edit here is durable (committed to the store) before it is acknowledged
and before it is fanned out.

Each row also gives the server's CPU per edit sent (`cpu_ms_per_edit`: the CPU seconds its processes
used during the client run, over the edits the clients sent; this server: the gateway and host
processes, per process in `cpu_ms_per_edit_by_process`; a peer: the process listening on its port).
On a shared machine that, not the latency, is the comparable figure.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulations.resources import cpu_seconds

SHARED = Path(os.environ.get("SYNCOPATE_PEERS_BENCH", Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers"))
PORTS = {"yws": 1234, "hocuspocus": 1235, "pycrdt": 1236}
KIND = {"yws": "yws", "hocuspocus": "hocuspocus", "pycrdt": "yws"}
NAMES = {"syncopate": "Syncopate (this server)", "yws": "y-websocket 1.5 (reference)", "hocuspocus": "Hocuspocus",
         "pycrdt": "pycrdt-websocket"}


def peers_dir() -> Path:
    return Path(os.environ.get("PEERS_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "fanout-peers"))


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def ensure_peers(wanted: list[str]) -> bool:
    """Install (once) and start the peers; True if this call started them."""
    d = peers_dir()
    env = dict(os.environ, PEERS_DIR=str(d))
    if not (d / "node_modules" / "yjs").exists() or not (d / "yws1" / "node_modules").exists():
        subprocess.run([str(SHARED / "peers.sh"), "install"], env=env, check=True, timeout=900)
    if all(_listening(PORTS[p]) for p in wanted):
        return False
    subprocess.run([str(SHARED / "peers.sh"), "start"], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(_listening(PORTS[p]) for p in wanted):
        time.sleep(0.2)
    return True


def stop_peers() -> None:
    subprocess.run([str(SHARED / "peers.sh"), "stop"], env=dict(os.environ, PEERS_DIR=str(peers_dir())),
                   check=False, timeout=60)


def peer_pids(peer: str) -> dict[str, int]:
    from simulations.resources import listening_pids
    return listening_pids(PORTS[peer])


def measured_fanout(pids: dict[str, int], run, *, py_spy: str | None = None, seconds: float = 10.0) -> dict:
    """run() -> the client's report, with the CPU the processes `pids` used meanwhile per edit sent.
    `py_spy`: a directory where py-spy records each Python process meanwhile (raw, with threads)."""
    spies = []
    if py_spy:
        Path(py_spy).mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        for label, pid in pids.items():
            spies.append(subprocess.Popen([str(spy), "record", "--pid", str(pid), "-d", str(int(seconds + 5)), "-r", "200",
                                           "-f", "raw", "--threads", "-o", str(Path(py_spy) / f"{label}.txt")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    before = cpu_seconds(pids)
    r = run()
    after = cpu_seconds(pids)
    for p in spies:
        p.wait(timeout=seconds + 60)
    used = {k: after[k] - before[k] for k in after if k in before}
    sent = r.get("sent") or 0
    if used and sent:
        r["server_cpu_s"] = round(sum(used.values()), 3)
        r["cpu_ms_per_edit"] = round(sum(used.values()) * 1000 / sent, 3)
        r["cpu_ms_per_edit_by_process"] = {k: round(v * 1000 / sent, 3) for k, v in sorted(used.items())}
    return r


def client_script() -> Path:
    """fanout.mjs with catalog uris (see the module doc), next to the peers' node_modules."""
    src = (SHARED / "fanout.mjs").read_text()
    pat = re.compile(r"^const trackUri = .*$", re.MULTILINE)
    if not pat.search(src):
        raise RuntimeError("fanout.mjs changed: no `const trackUri = ...` line to point at catalog uris")
    repl = ("const CATALOG_URIS = process.env.FANOUT_URIS ? (await import('node:fs')).readFileSync("
            "process.env.FANOUT_URIS, 'utf8').split('\\n').filter(Boolean) : null\n"
            "const trackUri = () => CATALOG_URIS ? CATALOG_URIS[Math.floor(Math.random() * CATALOG_URIS.length)] : "
            "'spotify:track:' + Array.from({ length: 22 }, () => B62[Math.floor(Math.random() * 62)]).join('')")
    src = pat.sub(lambda m: repl, src, count=1)
    out = peers_dir() / "fanout_catalog.mjs"
    out.write_text(src)
    return out


def run_fanout(script: Path, url: str, kind: str, a, *, uris_file: str, rooms: list[str] | None = None,
               query: str = "", user: str = "bench", prefix: str | None = None) -> dict:
    cmd = ["node", str(script), "--url", url, "--kind", kind, "--docs", str(a.docs), "--clients", str(a.clients),
           "--rate", str(a.rate), "--seconds", str(a.seconds), "--schema", "playlist", "--user", user]
    if rooms:
        cmd += ["--rooms", ",".join(rooms)]
    if query:
        cmd += ["--query", query]
    if prefix:
        cmd += ["--prefix", prefix]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 180, check=False,
                       env=dict(os.environ, FANOUT_URIS=uris_file))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (p.stderr or p.stdout)[-800:]}
    return json.loads(lines[-1])


async def _make_playlists(target, n: int, user: str) -> list[str]:
    import random

    from simulations.client import SimClient
    from simulations.scenarios.collab import _pid
    rng = random.Random()
    c = SimClient(target.url_fn, target.token(user), name="peers-setup")
    await c.connect()
    pids = []
    try:
        for _ in range(n):
            pid = _pid(rng)
            await c.call("playlist.create", {"id": pid, "name": "fanout bench", "collaborative": True})
            pids.append(pid)
    finally:
        await c.close()
    return pids


def table(rows: list[dict]) -> str:
    out = ["| server | durable before ack | delivered | delivery ratio | p50 ms | p99 ms | max ms | diverged docs | connect ms "
           "| server CPU ms per edit |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {NAMES.get(r['server'], r['server'])} | | error: {r['error'][:120]!r} | | | | | | | |")
            continue
        out.append(f"| {NAMES.get(r['server'], r['server'])} | {'yes' if r['server'] == 'syncopate' else 'no'} | "
                   f"{r.get('delivered'):,}/{r.get('expected_deliveries'):,} | {r.get('delivery_ratio')} | {r.get('p50_ms')} | "
                   f"{r.get('p99_ms')} | {r.get('max_ms')} | {r.get('diverged_docs')} | {r.get('connect_ms')} | "
                   f"{r.get('cpu_ms_per_edit', '')} |")
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--peers", default="yws,hocuspocus", help="comma list of yws, hocuspocus, pycrdt ('' = none)")
    p.add_argument("--url", help="a running Syncopate (default: start one)")
    p.add_argument("--data-dir")
    p.add_argument("--secret-file")
    p.add_argument("--store", default="sqlite", choices=("sqlite", "postgres", "tiered"))
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--out", help="write report.json and report.md here")
    p.add_argument("--keep-peers", action="store_true", help="leave the peers running")
    p.add_argument("--py-spy", help="record this server's processes with py-spy during the run, into this directory")


def main_args(a) -> int:
    logging.basicConfig(level=logging.WARNING)
    from simulations.cli import _secret
    from simulations.client import ws_url
    from simulations.faults import FaultSpec
    from simulations.harness import OwnServer, Target

    wanted = [p for p in a.peers.split(",") if p]
    started = ensure_peers(wanted) if wanted else False
    script = client_script()
    own = None
    rows = []
    fd, uris_file = tempfile.mkstemp(prefix="fanout-uris-", suffix=".txt")
    try:
        if a.url:
            target = Target.from_url(a.url, _secret(a))
        else:
            own = OwnServer(store=a.store, faults=FaultSpec(), hosts=a.hosts,
                            # the shared fan-out client opens all its sockets (200 in W1) with ONE user's
                            # token: over the default socket budget per user (50), which is for real users
                            gateway_config={"ws_rate": 1000.0, "ws_burst": 2000.0,
                                            "max_sockets_per_user": 10_000}).start()
            target = own.target()
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(t.uri for t in target.catalog.tracks))
        user = f"fanout{int(time.time()) % 100000}"
        pids = asyncio.run(_make_playlists(target, a.docs, user))
        ours = {}
        if own is not None:
            from simulations.resources import ray_server_pids
            ours = ray_server_pids(own.server)
        r = measured_fanout(ours, lambda: run_fanout(
            script, ws_url(target.url, "/v1/yjs/playlists"), "yws", a, uris_file=uris_file, rooms=pids,
            query="?token=" + target.token(user), user=user), py_spy=a.py_spy, seconds=a.seconds)
        r["server"] = "syncopate"
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        for peer in wanted:
            r = measured_fanout(peer_pids(peer), lambda peer=peer: run_fanout(
                script, f"ws://127.0.0.1:{PORTS[peer]}", KIND[peer], a, uris_file=uris_file, user=user,
                prefix=f"b{int(time.time())}-"))
            r["server"] = peer
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        os.unlink(uris_file)
        if own is not None:
            own.stop()
        if started and not a.keep_peers:
            stop_peers()
    md = (f"Yjs fan-out: {a.docs} docs x {a.clients} clients x {a.rate:g} edits/s for {a.seconds:g} s "
          f"(--schema playlist; catalog uris), one run, same machine\n\n" + table(rows))
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"rows": rows, "args": vars(a)}, indent=1))
        (out / "report.md").write_text(md)
    best = min((r["p99_ms"] for r in rows if r["server"] != "syncopate" and "p99_ms" in r), default=None)
    ours = next((r for r in rows if r["server"] == "syncopate"), {})
    ok = ours.get("delivery_ratio") == 1 and ours.get("diverged_docs") == 0
    if best is not None and ours.get("p99_ms") is not None:
        print(f"\nSyncopate p99 {ours['p99_ms']} ms vs best peer p99 {best} ms")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
