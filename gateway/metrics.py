"""Prometheus metrics of one gateway, plus the hosts' counters collected at scrape time."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class GatewayMetrics:
    def __init__(self, gateway_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("syncopate_connections", "open websocket connections", ["client"], registry=r)
        self.frames_in = Counter("syncopate_frames_in_total", "frames received", ["encoding"], registry=r)
        self.frames_out = Counter("syncopate_frames_out_total", "frames sent (replies and pushes)", registry=r)
        self.host_calls = Counter("syncopate_host_calls_total", "commands sent to hosts", ["kind"], registry=r)
        self.errors = Counter("syncopate_errors_total", "errors answered", ["code"], registry=r)
        self.http_requests = Counter("syncopate_http_requests_total", "REST requests", ["status"], registry=r)
        self.request_seconds = Histogram("syncopate_request_seconds", "request -> answer latency at the gateway",
                                         ["surface"], registry=r,
                                         buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .25, 1, 5))
        self.budget_refused = Counter("syncopate_budget_refused_total",
                                      "requests, frames or sockets refused or closed by a budget", ["budget"],
                                      registry=r)
        # The per-request series, bound once: `labels()` validates and locks on every call (a few
        # microseconds, three times per command).
        self.frames_in_json = self.frames_in.labels("json")
        self.frames_in_msgpack = self.frames_in.labels("msgpack")
        self.ws_seconds = self.request_seconds.labels("ws")
        self.yjs_seconds = self.request_seconds.labels("yjs")
        self._host_calls: dict[str, object] = {}
        self._host_stats: list[dict] = []
        self._gw_gauges: dict = {}
        r.register(_HostCollector(self))

    def host_call(self, kind: str) -> None:
        child = self._host_calls.get(kind)
        if child is None:
            child = self._host_calls[kind] = self.host_calls.labels(kind)
        child.inc()

    def set_host_stats(self, stats: list[dict]) -> None:
        self._host_stats = stats

    def set_gateway_stats(self, stats: dict) -> None:
        for name, value in stats.items():
            g = self._gw_gauges.get(name)
            if g is None:
                g = self._gw_gauges[name] = Gauge(f"syncopate_gateway_{name}", f"gateway {name.replace('_', ' ')}",
                                                   registry=self.registry)
            g.set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HostCollector:
    """The hosts' counters (activations, store commits and latency, ...), as last read by /healthz."""

    FAMILIES = (
        ("activations", CounterMetricFamily, "entity activations"),
        ("passivations", CounterMetricFamily, "entity passivations"),
        ("commits", CounterMetricFamily, "store transactions (group commits)"),
        ("committed_entries", CounterMetricFamily, "log entries committed"),
        ("commit_seconds", CounterMetricFamily, "time spent in store commits"),
        ("activation_seconds", CounterMetricFamily, "time spent activating entities (store load)"),
        ("active", GaugeMetricFamily, "entities in memory"),
        ("erased", CounterMetricFamily, "entities erased from the store (user data rights)"),
        ("compacted", CounterMetricFamily, "snapshots written to forget a deleted user"),
    )

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        for field, cls, doc in self.FAMILIES:
            fam = cls(f"syncopate_host_{field}", doc, labels=["host"])
            for s in self.metrics._host_stats:
                fam.add_metric([str(s.get("host_id"))], s.get(field, 0))
            yield fam
        # The hosts' budgets (budget_max_* are the configured limits: gauges) and what they refused
        # or cut (refused_*, budget_* counters), whatever actors/host.py Metrics names them.
        names = sorted({k for s in self.metrics._host_stats for k in s
                        if k.startswith(("budget_", "refused_")) and isinstance(s[k], (int, float))})
        for field in names:
            cls = GaugeMetricFamily if field.startswith("budget_max_") else CounterMetricFamily
            fam = cls(f"syncopate_host_{field}", f"host {field.replace('_', ' ')}", labels=["host"])
            for s in self.metrics._host_stats:
                fam.add_metric([str(s.get("host_id"))], s.get(field, 0))
            yield fam
