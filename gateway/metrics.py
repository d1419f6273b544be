"""Prometheus metrics of one gateway, plus the hosts' counters collected at scrape time."""
from __future__ import annotations

from typing import Awaitable, Callable

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
        self._host_stats: list[dict] = []

    def set_host_stats(self, stats: list[dict]) -> None:
        self._host_stats = stats

    def render(self) -> bytes:
        out = generate_latest(self.registry)
        fams = []
        act = CounterMetricFamily("syncopate_activations", "entity activations", labels=["host"])
        pas = CounterMetricFamily("syncopate_passivations", "entity passivations", labels=["host"])
        com = CounterMetricFamily("syncopate_store_commits", "store transactions (group commits)", labels=["host"])
        ent = CounterMetricFamily("syncopate_store_committed_entries", "log entries committed", labels=["host"])
        sec = CounterMetricFamily("syncopate_store_commit_seconds", "time spent in store commits", labels=["host"])
        asec = CounterMetricFamily("syncopate_activation_seconds", "time spent activating entities", labels=["host"])
        live = GaugeMetricFamily("syncopate_active_entities", "entities in memory", labels=["host"])
        for s in self._host_stats:
            h = str(s.get("host_id"))
            act.add_metric([h], s.get("activations", 0))
            pas.add_metric([h], s.get("passivations", 0))
            com.add_metric([h], s.get("commits", 0))
            ent.add_metric([h], s.get("committed_entries", 0))
            sec.add_metric([h], s.get("commit_seconds", 0.0))
            asec.add_metric([h], s.get("activation_seconds", 0.0))
            live.add_metric([h], s.get("active", 0))
        fams = [act, pas, com, ent, sec, asec, live]
        from prometheus_client.exposition import generate_latest as gl

        class _Once:
            def collect(self_inner):
                return fams

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Once())
        return out + gl(reg)
