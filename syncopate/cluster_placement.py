"""Where the server's actors run on a multi-node Ray cluster (`serve --ray-address`).

Gateways: one per node, pinned there (NodeAffinitySchedulingStrategy, soft=False), so that losing
a node loses that node's gateway only, and a load balancer has one target per node. The driver's
supervisor calls NodeGateways.sync() every second: a node that joined gets its gateway, a dead
node's gateway is forgotten (a pinned actor can't move; its node's replacement is a new node with
a new id, and gets a gateway of its own). Each gateway listens on the address the operator chose
(`--host`: "node" for the node's IP as Ray reports it, 0.0.0.0, or an address) and answers
`/healthz` with its node id and the hosts it reaches.

Hosts: a hard anti-affinity where the cluster allows it: a STRICT_SPREAD placement group with one
bundle per host when there are at least as many live nodes as hosts (no two hosts on one node; a
host whose node dies waits for a node without one). With fewer nodes than hosts, STRICT_SPREAD
can't be placed: SPREAD (best effort), with a warning.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("syncopate.server")

# Each host's bundle reserves a sliver of CPU: Ray refuses all-zero bundles, and hosts ask num_cpus=0.
HOST_BUNDLE = {"CPU": 0.001}
GATEWAY_START_TIMEOUT_S = 60.0


def alive_nodes() -> list[dict]:
    """The cluster's live nodes (ray.nodes(): one GCS call), in a stable order."""
    import ray
    return sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"])


def node_gateway_id(node_id: str) -> str:
    return f"n{node_id[:12]}"


# -- hosts ----------------------------------------------------------------------------------------------
@dataclass
class HostPlacement:
    strategies: list                 # one scheduling strategy per host index
    placement_group: object = None   # to remove at stop
    hard: bool = False


def place_hosts(cluster: str, n_hosts: int, timeout: float = 60.0) -> HostPlacement:
    """Scheduling strategies for the hosts of a cluster deployment (see the module doc)."""
    import ray
    from ray.util import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    nodes = alive_nodes()
    if n_hosts < 2:
        return HostPlacement(["SPREAD"] * n_hosts)
    if len(nodes) < n_hosts:
        log.warning("%d hosts on %d live nodes: hosts spread best effort (SPREAD), some nodes run several; "
                    "with at least %d nodes each host gets a node of its own", n_hosts, len(nodes), n_hosts)
        return HostPlacement(["SPREAD"] * n_hosts)
    pg = placement_group([dict(HOST_BUNDLE) for _ in range(n_hosts)], strategy="STRICT_SPREAD",
                         name=f"{cluster}-hosts")
    try:
        ray.get(pg.ready(), timeout=timeout)
    except Exception:
        ray.util.remove_placement_group(pg)
        raise
    return HostPlacement([PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
                          for i in range(n_hosts)], pg, hard=True)


def release_hosts(placement: HostPlacement | None) -> None:
    if placement is not None and placement.placement_group is not None:
        import ray
        try:
            ray.util.remove_placement_group(placement.placement_group)
        except Exception as exc:
            log.warning("removing the hosts' placement group: %s", exc)


# -- gateways -------------------------------------------------------------------------------------------
@dataclass
class NodeGateway:
    node_id: str
    gateway_id: str
    ip: str
    handle: object
    started: object = None           # the pending ensure_started() ref
    port: int | None = None
    url: str | None = None
    last_error: str | None = None
    created_at: float = field(default_factory=time.monotonic)


class NodeGateways:
    """One gateway actor per live node. `make(node_id, gateway_id)` creates the pinned actor;
    `announce(line)` tells the operator (the driver prints it) where a gateway listens."""

    def __init__(self, make: Callable[[str, str], object], host: str, announce: Callable[[str], None]) -> None:
        self.make = make
        self.host = host
        self.announce = announce
        self.by_node: dict[str, NodeGateway] = {}

    @property
    def handles(self) -> list:
        return [g.handle for g in self.by_node.values()]

    def urls(self) -> list[str]:
        return [g.url for g in self.by_node.values() if g.url]

    def ports(self) -> list[int]:
        return [g.port for g in self.by_node.values() if g.port is not None]

    def sync(self, nodes: list[dict] | None = None) -> None:
        """Create gateways for live nodes that have none; forget those of nodes that died."""
        import ray
        nodes = alive_nodes() if nodes is None else nodes
        live = {n["NodeID"]: n for n in nodes}
        for node_id in [k for k in self.by_node if k not in live]:
            gw = self.by_node.pop(node_id)
            try:
                ray.kill(gw.handle, no_restart=True)
            except Exception:        # the actor died with its node
                pass
            self.announce(f"gateway {gw.gateway_id} on node {node_id} removed (node dead)")
        for node_id, n in live.items():
            if node_id not in self.by_node:
                gid = node_gateway_id(node_id)
                self.by_node[node_id] = NodeGateway(node_id, gid, n.get("NodeManagerAddress", ""),
                                                    self.make(node_id, gid))

    def ensure_started(self, timeout: float = 30.0) -> None:
        """Ask every gateway to listen (a restarted one listens again); collect the ports as they
        answer, without waiting for one that hangs (its node may be dying)."""
        import ray
        for gw in self.by_node.values():
            if gw.started is None:
                gw.started = gw.handle.ensure_started.remote()
        refs = {gw.started: gw for gw in self.by_node.values()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        for ref in ready:
            gw = refs[ref]
            gw.started = None       # asked again next time: a restarted actor must listen again
            try:
                port = ray.get(ref)
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                if msg != gw.last_error:           # once per distinct error, not every second
                    log.warning("gateway %s on node %s: %s", gw.gateway_id, gw.node_id[:12], msg)
                gw.last_error = msg
                continue
            gw.last_error = None
            if port != gw.port:
                gw.port = port
                gw.url = f"http://{self.advertised(gw)}:{port}"
                self.announce(f"gateway {gw.gateway_id} on node {gw.node_id} listening on {gw.url}")

    def advertised(self, gw: NodeGateway) -> str:
        """The address clients reach the gateway at: its node's IP for "node" or a wildcard bind."""
        if self.host in ("node", "0.0.0.0", "::", ""):
            return gw.ip
        return self.host

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(g.port is None for g in self.by_node.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [g.gateway_id for g in self.by_node.values() if g.port is None]
                raise TimeoutError(f"gateways {missing} did not start in {timeout:.0f} s")
            self.ensure_started(timeout=min(left, 5.0))
