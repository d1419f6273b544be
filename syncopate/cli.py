"""The `syncopate` command: serve, token, user, app, simulate, bench."""
from __future__ import annotations

import argparse
import sys


def _serve(args) -> int:
    from syncopate.cluster_store import StoreMismatch
    from syncopate.server import ClusterJoinError, RayServer, ServerSpec

    from syncopate.logs import setup_logging
    setup_logging(args.log_level, "driver")
    hosts = args.hosts if args.hosts is not None else (2 if args.postgres_dsn else 1)
    if hosts < 1:
        print("--hosts must be at least 1", file=sys.stderr)
        return 2
    try:
        host, gateways = _listen_choice(args)
    except ValueError as exc:
        print(f"syncopate serve: {exc}", file=sys.stderr)
        return 2
    spec = ServerSpec(data_dir=args.data_dir, host=host, port=args.port, redis_url=args.redis_url,
                      postgres_dsn=args.postgres_dsn, ray_address=args.ray_address, hosts=hosts,
                      gateways=gateways, catalog=args.catalog, secret_file=args.secret_file,
                      channel_secret_file=args.channel_secret_file, channel_bind=args.channel_bind,
                      stream_secret_file=args.stream_secret_file,
                      idle_timeout_s=args.idle_timeout, log_level=args.log_level, prefix=args.table_prefix,
                      shared_data_dir=args.shared_data_dir,
                      **({} if args.malloc_arena_max is None else {"malloc_arena_max": args.malloc_arena_max}))
    if spec.malloc_arena_max < 0:
        print("--malloc-arena-max must be 0 (glibc's default) or a count of arenas", file=sys.stderr)
        return 2
    if args.redis_url and not args.postgres_dsn:
        print("--redis-url needs --postgres-dsn: Redis is the warm tier over PostgreSQL, not a durable store",
              file=sys.stderr)
        return 2
    try:
        server = RayServer(spec, announce=lambda line: print(line, flush=True)).start()
    except (StoreMismatch, ClusterJoinError) as exc:    # also a host's refusal (Ray's error subclasses the cause)
        print(f"syncopate serve: {exc}", file=sys.stderr)
        return 2
    store = "tiered (Redis over PostgreSQL)" if args.postgres_dsn and args.redis_url else \
        "PostgreSQL" if args.postgres_dsn else f"SQLite ({args.data_dir}/syncopate.db)"
    print(f"syncopate serving on {' '.join(server.urls())}  hosts={spec.hosts} store={store}", flush=True)
    print(f"token: syncopate token USER --data-dir {args.data_dir}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0


def _listen_choice(args) -> tuple[str, int | str]:
    """(--host, --gateways) for this deployment. On a cluster the listen address must be chosen: the
    local default 127.0.0.1 would make each node's gateway reachable from that node only."""
    gateways = args.gateways or ("per-node" if args.ray_address else "1")
    if gateways != "per-node":
        try:
            gateways = int(gateways)
        except ValueError:
            raise ValueError(f"--gateways takes a count or 'per-node', not {args.gateways!r}") from None
        if gateways < 1:
            raise ValueError("--gateways must be at least 1")
    elif not args.ray_address:
        raise ValueError("--gateways per-node needs a cluster (--ray-address)")
    host = args.host
    if host is None:
        if args.ray_address:
            raise ValueError("on a cluster (--ray-address) choose where gateways listen with --host: 'node' "
                             "(each node's IP as Ray reports it), 0.0.0.0 (every interface), or an address "
                             "(127.0.0.1: reachable from the node itself only, e.g. behind a proxy there)")
        host = "127.0.0.1"
    elif host == "node" and not args.ray_address:
        raise ValueError("--host node needs a cluster (--ray-address)")
    return host, gateways


def _token(args) -> int:
    from gateway.auth import Auth, load_secret

    auth = Auth(load_secret(args.data_dir, args.secret_file))
    print(auth.mint(args.user, product=args.product, ttl_s=args.ttl, device_id=args.device))
    return 0


# -- user and app: through the running server's /admin API (docs/oauth.md) ------------------------
# Through the server, not offline on the store: a host holds an active account in memory, so a
# change written beside it would not be seen (and fencing would refuse the host's next write).
# The operator token is minted here from the signing key, like `syncopate token`.

def _admin(args, method: str, path: str, body: dict | None = None) -> dict:
    import json
    import urllib.error
    import urllib.request

    from gateway.auth import Auth, load_secret
    token = Auth(load_secret(args.data_dir, args.secret_file)).mint_operator()
    req = urllib.request.Request(args.server.rstrip("/") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read())["error"]["message"]
        except Exception:
            msg = exc.reason
        raise SystemExit(f"syncopate: {method} {path}: {exc.code} {msg}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"syncopate: no server at {args.server} ({exc.reason}); start it with `syncopate serve`") from None


def _read_password(args) -> str:
    """From the terminal (asked twice) or, when stdin is not a terminal, its first line: never argv."""
    import getpass
    if sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            raise SystemExit("syncopate: the passwords differ")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    return pw


def _user_body(args) -> dict:
    import secrets as _secrets

    from actors.account import hash_password
    body = {k: getattr(args, k) for k in ("display_name", "country", "product", "email")
            if getattr(args, k, None) is not None}
    if args.password:
        try:
            body["password_hash"] = hash_password(_read_password(args), _secrets.token_bytes(16))
        except ValueError as exc:
            raise SystemExit(f"syncopate: {exc}") from None
    return body


def _print(obj) -> None:
    import json
    print(json.dumps(obj, indent=2, sort_keys=True))


def _user(args) -> int:
    if args.action == "add":
        _print(_admin(args, "POST", "/admin/users", {"id": args.id, **_user_body(args)}))
    elif args.action == "set":
        _print(_admin(args, "PATCH", f"/admin/users/{args.id}", _user_body(args)))
    else:
        _print(_admin(args, "GET", f"/admin/users?offset={args.offset}&limit={args.limit}"))
    return 0


def _app(args) -> int:
    if args.action == "add":
        _print(_admin(args, "POST", "/admin/apps", {"name": args.name, "redirect_uris": args.redirect_uri,
                                                     "public": args.public}))
    elif args.action == "set":
        body = {"redirect_uris": args.redirect_uri} if args.redirect_uri else {}
        if args.name:
            body["name"] = args.name
        _print(_admin(args, "PATCH", f"/admin/apps/{args.client_id}", body))
    else:
        _print(_admin(args, "GET", f"/admin/apps?offset={args.offset}&limit={args.limit}"))
    return 0


def _hosts(args) -> int:
    """`hosts add|remove N` asks the running server's driver (through the /admin API) and waits for
    the membership view to show it; `hosts list` prints the view."""
    import time
    if args.action == "list":
        _print(_admin(args, "GET", "/admin/hosts"))
        return 0
    slot = getattr(args, "slot", None)
    if (args.n is None) == (slot is None):
        raise SystemExit("syncopate: give either N (the last N hosts) or --slot S (that one)")
    if slot is not None:
        before = _admin(args, "POST", "/admin/hosts", {"remove_slot": slot})
        want = len(before["hosts"]) - 1
    else:
        if args.n < 1:
            raise SystemExit("syncopate: N must be at least 1")
        before = _admin(args, "POST", "/admin/hosts", {args.action: args.n})
        want = len(before["hosts"]) + (args.n if args.action == "add" else -args.n)
    deadline = time.monotonic() + args.wait
    while True:
        view = _admin(args, "GET", "/admin/hosts")
        if view["epoch"] > before["epoch"] and len(view["hosts"]) == want and slot not in view["hosts"]:
            _print(view)
            return 0
        if time.monotonic() > deadline:
            raise SystemExit(f"syncopate: the view still has {len(view['hosts'])} hosts after {args.wait:.0f} s "
                             f"(wanted {want}); see the server's log")
        time.sleep(0.5)


def _admin_options(p) -> None:
    p.add_argument("--server", default="http://127.0.0.1:8080", help="the running server's URL")
    p.add_argument("--data-dir", default="./var", help="where secret.key is (to mint the operator token)")
    p.add_argument("--secret-file", help="token signing key file (default: <data-dir>/secret.key)")


class _Removed(argparse.Action):
    """`--secret VALUE` was removed: a secret on a command line is visible to every user (ps, shell
    history). Refused by name, without echoing the value (and not taken as a prefix of --secret-file)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was removed: put the secret in a file (mode 0600) and give --secret-file FILE")


def _events(args) -> int:
    """`syncopate events reconcile`: recount the streams from the pipeline's durable record and
    compare them with the maintained counts (docs/events.md). Exit 1 on any difference."""
    import asyncio
    import json

    from pathlib import Path

    from syncopate.events.reconcile import reconcile
    if not args.postgres_dsn and not (Path(args.data_dir) / "eventcounts.db").exists():
        print(f"syncopate: no event pipeline under {args.data_dir} (no eventcounts.db); give the server's "
              f"--data-dir, or --postgres-dsn", file=sys.stderr)
        return 2
    report = asyncio.run(reconcile(args.data_dir, args.redis_url, args.postgres_dsn, args.prefix))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"recounted {report['streams']} streams over {report['keys']} (track, day) pairs; "
              f"{len(report['differences'])} differences; bus: {report['pending']} pending, "
              f"{report['backlog']} not yet delivered")
        for d in report["differences"][:50]:
            print(f"  {d['track_uri']} {d['day']}: counted {d['counted']}, recounted {d['recounted']}")
    return 1 if report["differences"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syncopate", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    ev = sub.add_parser("events", help="the listening-event pipeline (docs/events.md)")
    evsub = ev.add_subparsers(dest="action", required=True)
    r = evsub.add_parser("reconcile", help="recount the streams from the durable record; exit 1 on a difference")
    r.add_argument("--data-dir", default="./var")
    r.add_argument("--redis-url", default=None, help="the bus of a server run with --redis-url")
    r.add_argument("--postgres-dsn", default=None)
    r.add_argument("--prefix", default="syncopate_")
    r.add_argument("--json", action="store_true")
    ev.set_defaults(fn=_events)

    s = sub.add_parser("serve", help="run the server (local Ray by default)")
    s.add_argument("--host", default=None,
                   help="address the gateways listen on (default 127.0.0.1; with --ray-address required: "
                        "'node' for each node's IP, 0.0.0.0, or an address)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--data-dir", default="./var")
    s.add_argument("--redis-url")
    s.add_argument("--postgres-dsn")
    s.add_argument("--table-prefix", default="syncopate_",
                   help="prefix of the store's tables / keys (several deployments can share one PostgreSQL)")
    s.add_argument("--ray-address", help="join an existing Ray cluster instead of starting a local one")
    s.add_argument("--hosts", type=int, default=None,
                   help="entity host actors (default: 1 on SQLite, which has one writer at a time; 2 otherwise)")
    s.add_argument("--gateways", default=None,
                   help="gateway actors: a count (share --port via SO_REUSEPORT; default 1), or 'per-node' "
                        "(the default with --ray-address): one on each node, created as nodes join")
    s.add_argument("--shared-data-dir", action="store_true",
                   help="with --ray-address and SQLite: --data-dir is one directory shared by every node "
                        "(checked by each host at start); without it SQLite is refused on a cluster")
    s.add_argument("--catalog", help="catalog file (docs/catalog.md); default: generated, 10,000 tracks")
    s.add_argument("--secret", nargs="?", action=_Removed, help=argparse.SUPPRESS)
    s.add_argument("--secret-file", help="token signing key file (default: <data-dir>/secret.key, created 0600)")
    s.add_argument("--channel-secret-file",
                   help="host channel key file (default: <data-dir>/channel.key, created 0600); "
                        "on a cluster, present on every node at the same path")
    s.add_argument("--stream-secret-file",
                   help="stream URL signing key file (default: <data-dir>/stream.key, created 0600; docs/rights.md)")
    s.add_argument("--channel-bind", metavar="ADDR",
                   help="address the hosts' channel listens on (default: 127.0.0.1; with --ray-address, "
                        "'node': the IP Ray reports for each host's node)")
    s.add_argument("--idle-timeout", type=float, default=600.0, help="seconds before an idle entity is passivated")
    s.add_argument("--malloc-arena-max", type=int, default=None, metavar="N",
                   help="glibc malloc arenas per gateway/host process (default 2, or $SYNCOPATE_MALLOC_ARENA_MAX; "
                        "0: glibc's default; see syncopate/process_env.py)")
    s.add_argument("--log-level", default="INFO")
    s.set_defaults(fn=_serve)

    t = sub.add_parser("token", help="print a bearer token for USER")
    t.add_argument("user")
    t.add_argument("--data-dir", default="./var")
    t.add_argument("--secret", nargs="?", action=_Removed, help=argparse.SUPPRESS)
    t.add_argument("--secret-file", help="token signing key file (default: <data-dir>/secret.key)")
    t.add_argument("--product", choices=["premium", "free"], default="premium")
    t.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    t.add_argument("--device", help="bind the token to a device id (session sign-out revokes it)")
    t.set_defaults(fn=_token)

    u = sub.add_parser("user", help="add, change or list accounts (through the running server)")
    usub = u.add_subparsers(dest="action", required=True)
    for action in ("add", "set"):
        a = usub.add_parser(action)
        a.add_argument("id")
        a.add_argument("--display-name")
        a.add_argument("--country", help="ISO 3166-1 alpha-2 (default on add: US)")
        a.add_argument("--product", choices=["premium", "free"])
        a.add_argument("--email")
        a.add_argument("--password", action="store_true",
                       help="set the sign-in password: asked on the terminal, or the first line of stdin")
        _admin_options(a)
    a = usub.add_parser("list")
    a.add_argument("--offset", type=int, default=0)
    a.add_argument("--limit", type=int, default=50)
    _admin_options(a)
    u.set_defaults(fn=_user)

    ap = sub.add_parser("app", help="register or list OAuth client apps (through the running server)")
    asub = ap.add_subparsers(dest="action", required=True)
    a = asub.add_parser("add")
    a.add_argument("name")
    a.add_argument("--redirect-uri", action="append", required=True, help="exact redirect URI (repeatable)")
    a.add_argument("--public", action="store_true", help="a public client (PKCE, no secret)")
    _admin_options(a)
    a = asub.add_parser("set")
    a.add_argument("client_id")
    a.add_argument("--name")
    a.add_argument("--redirect-uri", action="append", help="replaces the redirect URIs (repeatable)")
    _admin_options(a)
    a = asub.add_parser("list")
    a.add_argument("--offset", type=int, default=0)
    a.add_argument("--limit", type=int, default=50)
    _admin_options(a)
    ap.set_defaults(fn=_app)

    hp = sub.add_parser("hosts", help="list, add or remove entity hosts of the running server")
    hsub = hp.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        a = hsub.add_parser(action)
        a.add_argument("n", type=int, nargs=None if action == "add" else "?", help="how many hosts")
        if action == "remove":
            a.add_argument("--slot", type=int, help="remove this slot (see `hosts list`) instead of the last N")
        a.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the membership view")
        _admin_options(a)
    _admin_options(hsub.add_parser("list"))
    hp.set_defaults(fn=_hosts)

    try:
        from simulations.cli import add_parsers
    except ImportError:
        pass
    else:
        add_parsers(sub)

    args = p.parse_args(argv)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
