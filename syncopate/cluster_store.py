"""The store has to fit the deployment: on a multi-node cluster, every host must reach the same data.

PostgreSQL (or tiered: Redis over PostgreSQL) is reached over the network from any node. SQLite is a
file in the data dir: on a node-local dir, a host Ray restarts on another node opens a new, empty
database there and acknowledged changes are gone (issue #13: 546 of 2,461 entries lost, two
diverging files left behind). So with --ray-address:

- SQLite is refused, unless the operator asserts the data dir is shared by every node
  (`--shared-data-dir`, e.g. one NFS mount at the same path everywhere);
- that assertion is checked: at start the driver writes a marker file with a fresh random token in
  the data dir, and every host, wherever Ray places (or re-places) it, reads the marker before it
  opens the store. A host that does not see the driver's token refuses to start, with the reason.

The check is about seeing the same directory, not about SQLite's locking over a network file
system (SQLite's own documentation warns about that; PostgreSQL is the recommended store).
"""
from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

MARKER = ".syncopate-shared-data-dir"


class StoreMismatch(ValueError):
    """The store does not fit the deployment (a message for the operator)."""


def check_store_fits(ray_address: str | None, postgres_dsn: str | None, shared_data_dir: bool) -> None:
    """Refuse SQLite on a cluster unless the data dir is asserted shared (then verified by the hosts)."""
    if not ray_address or postgres_dsn:
        return
    if not shared_data_dir:
        raise StoreMismatch(
            "on a Ray cluster (--ray-address) the SQLite store would live in each node's own data dir: "
            "a host restarted on another node would open an empty database and acknowledged changes would "
            "be lost. Use --postgres-dsn (PostgreSQL, optionally --redis-url for the tiered store), or, if "
            "--data-dir is one directory shared by every node (the same mount at the same path), say so "
            "with --shared-data-dir (each host checks it at start).")


def write_marker(data_dir: str, cluster: str) -> str:
    """Write the marker the hosts look for; returns its token (passed to the hosts in their spec)."""
    token = secrets.token_hex(16)
    path = Path(data_dir) / MARKER
    tmp = path.with_name(f"{MARKER}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"cluster": cluster, "token": token, "written_by": socket.gethostname()}))
    os.replace(tmp, path)      # whole or absent: a host never reads half a marker
    return token


def verify_shared_data_dir(spec: dict, where: str = "") -> None:
    """In a host, before the store opens: the data dir is the one the driver wrote its marker in.

    A no-op unless the spec carries a marker token (SQLite on a cluster, with --shared-data-dir)."""
    token = spec.get("shared_dir_token")
    if not token:
        return
    data_dir = spec["data_dir"]
    path = Path(data_dir) / MARKER
    place = where or socket.gethostname()
    try:
        seen = json.loads(path.read_text()).get("token")
    except FileNotFoundError:
        seen = None
    except (OSError, ValueError) as exc:
        raise StoreMismatch(f"the data dir {data_dir} on {place}: can't read {MARKER} ({exc})") from None
    if seen != token:
        what = "has no" if seen is None else "has another deployment's"
        raise StoreMismatch(
            f"--shared-data-dir was given, but the data dir {data_dir} on {place} {what} marker "
            f"({MARKER}) from this server's start: it is not the directory the server wrote, so it is "
            "not shared by every node. Mount the same directory at that path on every node, or use "
            "--postgres-dsn. This host does not start (its SQLite database would be a different file).")
