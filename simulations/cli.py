"""`syncopate simulate ...` and `syncopate bench ...` (added to syncopate/cli.py by add_parsers).

    syncopate simulate SCENARIO [--url http://HOST:PORT] [--data-dir DIR | --secret-file F] [--seconds N]
                                [--out DIR] [scenario sizes] [fault options]
    syncopate simulate scale-model [--users N --devices-per-user D --playlists P ...]
    syncopate simulate peers [--docs 20 --clients 10 --rate 5 --seconds 10]
    syncopate bench runtime|connect|scale-model|peers [its options]

Without --url the command starts its own server (RayServer, port chosen free, temp data dir, the
store the faults need) and stops it afterwards. With --url it mints its users' tokens with that
server's secret: --secret-file, or the secret.key in --data-dir (the server's data dir).
docs/simulation.md describes every scenario, option, and field of the report.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

LIVE = ("collab", "connect", "reconnect-storm", "mixed", "abuse")


def _scenario_classes() -> dict:
    from simulations import scenarios
    return {n: scenarios.get(n) for n in scenarios.NAMES}


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--url", help="a running server (default: start one)")
    g.add_argument("--data-dir", help="with --url: the server's data dir (its secret.key signs the tokens)")
    g.add_argument("--secret-file", help="with --url: the file of the server's token signing secret")
    g.add_argument("--store", choices=("sqlite", "postgres", "tiered"), default=None,
                   help="the store of the server this command starts (default sqlite; postgres with --nodes; "
                        "faults may imply one)")
    g.add_argument("--nodes", type=int, default=0, metavar="N",
                   help="start a local multi-node Ray cluster of N raylets (simulations/cluster.py) and serve on "
                        "it: one gateway per node, hosts spread")
    g.add_argument("--postgres-dsn", default=None, help="PostgreSQL for --store postgres|tiered "
                   "(default $SYNCOPATE_TEST_POSTGRES or postgresql://postgres@127.0.0.1:5432/test)")
    g.add_argument("--hosts", type=int, default=2, help="entity hosts of the server this command starts")
    g.add_argument("--gateways", type=int, default=1, help="gateways of the server this command starts")
    g.add_argument("--catalog", help="the server's catalog file (default: the generated catalog)")
    r = p.add_argument_group("run")
    r.add_argument("--seconds", type=float, default=30.0, help="length of the load phase")
    r.add_argument("--out", help="report directory (default reports/simulate-SCENARIO-TIMESTAMP)")
    r.add_argument("--encoding", choices=("json", "msgpack"), default=None, help="websocket frame encoding")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-plots", action="store_true")
    f = p.add_argument_group("faults (need the server this command starts)")
    f.add_argument("--kill-host-at", type=float, metavar="SECONDS", help="ray.kill host 0 at SECONDS")
    f.add_argument("--kill-gateway-at", type=float, metavar="SECONDS", help="ray.kill gateway 0 at SECONDS")
    f.add_argument("--restart-redis-at", type=float, metavar="SECONDS",
                   help="restart the warm-tier Redis at SECONDS (runs the tiered store on a redis-server of its own)")
    f.add_argument("--kill-node-at", type=float, metavar="SECONDS",
                   help="with --nodes: kill -9 the raylet of the worker node running the most hosts at SECONDS")
    f.add_argument("--cut-postgres", metavar="SECONDS:DURATION",
                   help="cut PostgreSQL off at SECONDS for DURATION (the store connects through a proxy)")


def add_parsers(sub) -> None:
    classes = _scenario_classes()
    sim = sub.add_parser("simulate", help="drive simulated users against a server and write a report",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = sim.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name in LIVE:
        cls = classes[name]
        p = ssub.add_parser(name, help=cls.description, description=(sys.modules[cls.__module__].__doc__ or ""),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        g = p.add_argument_group(f"{name} sizes")
        for key, default in cls.params.items():
            if key in ("encoding",):
                continue
            kind = type(default) if default is not None else float
            g.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                           help=f"{cls.help.get(key, key)} (default {default})")
        if name == "connect":
            g.add_argument("--period", type=float, default=None,
                           help="seconds between a user's commands (W2: 2); sets --rate to 1/period")
        _add_common(p)
        p.set_defaults(fn=_simulate, scenario=name)

    sm = ssub.add_parser("scale-model", help="in-process scale model and capacity projection (no network)")
    from simulations import scale_model
    scale_model.add_arguments(sm)
    sm.set_defaults(fn=lambda a: scale_model.main_args(a))

    pe = ssub.add_parser("peers", help="the Yjs fan-out workload against this server and the peer servers")
    from simulations import peers
    peers.add_arguments(pe)
    pe.set_defaults(fn=lambda a: peers.main_args(a))

    b = sub.add_parser("bench", help="benchmarks: runtime (durable acks), connect (W2), scale-model, peers")
    b.add_argument("name", choices=("runtime", "connect", "scale-model", "peers"))
    b.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark (see its --help)")
    b.set_defaults(fn=_bench)


def _bench(args) -> int:
    import importlib
    mod = {"runtime": "bench_runtime", "connect": "bench_connect", "scale-model": "scale_model",
           "peers": "peers"}[args.name]
    return importlib.import_module(f"simulations.{mod}").main(args.args) or 0


def _params(args, cls) -> dict:
    out = {}
    for key in cls.params:
        v = getattr(args, key, None)
        if v is not None:
            out[key] = v
    if getattr(args, "period", None):
        out["rate"] = 1.0 / args.period
    if args.encoding:
        out["encoding"] = args.encoding
    if args.seed is not None:
        out["seed"] = args.seed
    return out


def _secret(args) -> str:
    from gateway.auth import read_secret
    if args.secret_file:
        path = Path(args.secret_file)
    elif not args.data_dir:
        raise SystemExit("--url needs the server's secret: --secret-file F, or --data-dir DIR (its secret.key)")
    else:
        path = Path(args.data_dir) / "secret.key"
    if not path.exists():
        raise SystemExit(f"no {path}: give the data dir the server runs on, or --secret-file")
    return read_secret(path)


def _simulate(args) -> int:
    from simulations.faults import POSTGRES_DSN, FaultSpec
    from simulations.harness import OwnServer, Target, run_scenario, scenario_class

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cls = scenario_class(args.scenario)
    faults = FaultSpec.from_args(args)
    catalog = None
    if args.catalog:
        from catalog import Catalog
        catalog = Catalog.from_file(args.catalog)
    out = args.out or f"reports/simulate-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    own = None
    if args.url:
        if faults.any():
            raise SystemExit("fault options need the server this command starts: drop --url")
        target = Target.from_url(args.url, _secret(args), catalog=catalog)
    else:
        if args.nodes < 0 or (faults.kill_node_at is not None and args.nodes < 2):
            raise SystemExit("--kill-node-at needs --nodes 2 or more (the head node is never killed)")
        where = f" on {args.nodes} nodes" if args.nodes else ""
        print(f"starting a server ({args.store or 'default store'}, {args.hosts} hosts{where}) ...",
              file=sys.stderr, flush=True)
        try:
            own = OwnServer(store=args.store, faults=faults, hosts=args.hosts, gateways=args.gateways,
                            postgres_dsn=args.postgres_dsn or POSTGRES_DSN, catalog=args.catalog,
                            nodes=args.nodes).start()
        except ValueError as exc:
            raise SystemExit(f"syncopate simulate: {exc}") from None
        target = own.target()
        if catalog is not None:
            target.catalog = catalog
    from simulations import tune_gc
    tune_gc()
    try:
        report = asyncio.run(run_scenario(cls, target, _params(args, cls), seconds=args.seconds, out_dir=out,
                                          faults=faults, quiet=args.quiet, plots=not args.no_plots))
    finally:
        if own is not None:
            own.stop()
    _print_summary(report, out)
    return 0 if report["ok"] else 1


def _print_summary(report: dict, out: str) -> None:
    lat = report["latency_ms"]
    lines = [(f"{report['scenario']}: {'OK' if report['ok'] else 'FAILED'}  "
             f"acked/s {report['throughput']['acked_per_s']}  errors {report['errors']['total']}")]
    for name, v in lat.items():
        if name.startswith(("ack:", "w2:", "fanout:", "reconnect")):
            lines.append(f"  {name:32s} n={v['count']:<7} p50={v['p50']} p95={v['p95']} p99={v['p99']} max={v['max']}")
    c = report["convergence"]
    lines.append("  convergence: " + ", ".join(f"{k}={v}" for k, v in c.items() if k not in ("missing_examples",)))
    for f in report.get("faults", []):
        lines.append(f"  fault {f['kind']} at {f.get('at_s')} s: acked before {f.get('acked_before')}, missing "
                     f"{f.get('acked_missing_after_recovery')}, recovery {f.get('recovery', {}).get('recovery_s')} s")
    if report.get("abuse"):
        from simulations.report import abuse_lines
        lines += ["  " + x for x in abuse_lines(report)]
    lines.append(f"  report: {out}/report.md")
    print("\n".join(lines))
