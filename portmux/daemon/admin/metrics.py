# -*- test-case-name: tests.daemon.test_metrics -*-
"""``/metrics``: portmux's live counters through prometheus_client, one registry per multiplexer.

A custom Collector reads the multiplexer's Stats (and its nested TLS stages) at
scrape time; nothing is counted twice and no global registry is used. The page is
rendered in the reactor thread (the counters are only touched there).

Every accepted connection is accounted for::

    portmux_accepted_connections_total{listener}
      = sum over top-level routes of portmux_connections_total{listener,route}
      + portmux_refusals_total{listener,route=""}      (refused before routing)
      + portmux_closed_while_sniffing_total{listener}
      + connections still being sniffed (portmux_sniffing_connections)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.web.resource import Resource

from portmux.control._cluster import registry_health
from portmux.daemon.admin.inventory import backends_of, certificates, walk_routes

__all__ = ["MetricsPage", "PortmuxCollector", "registry_for"]

NOT_ACCEPTED_LIMITS = ("max_connections", "per_source_limit")
"""The limits that close a connection at accept (Multiplexer.admit), each always exported."""


def _buckets(histogram: Any) -> list[tuple[str, float]]:
    return [("+Inf" if bound == float("inf") else repr(bound), count)
            for bound, count in histogram.cumulative()]


def _group_metrics(stats: Any) -> Iterator[Metric]:
    """In a process group (daemon/group.py): its size and the other members' accepted counts.

    Every other metric here is this process's own; the other members' detailed
    counters are summed on the status page (status.json), not here.
    """
    elsewhere = getattr(stats, "elsewhere", None)
    if not elsewhere:
        return
    yield GaugeMetricFamily("portmux_processes", "Members of this process group (processes = N).",
                            value=1 + len(elsewhere))
    members = CounterMetricFamily(
        "portmux_group_accepted_connections",
        "Connections accepted by the other members of this process group (by member number).",
        labels=["process"])
    for label, snapshot in sorted(elsewhere.items()):
        members.add_metric([label], float(snapshot.get("accepted", 0)))
    yield members


class PortmuxCollector(Collector):
    """Reads one multiplexer's live stats at every scrape."""

    def __init__(self, mux: Any) -> None:
        self.mux = mux

    def collect(self) -> Iterator[Metric]:
        mux = self.mux
        stats = mux.stats
        accepted = CounterMetricFamily(
            "portmux_accepted_connections", "Connections accepted by a listener.", labels=["listener"])
        sniff_closed = CounterMetricFamily(
            "portmux_closed_while_sniffing", "Connections closed by the client before being classified.",
            labels=["listener"])
        for listener, counters in sorted(stats.listeners.items()):
            accepted.add_metric([listener], counters.accepted)
            sniff_closed.add_metric([listener], counters.closed_sniffing)
        yield accepted
        yield sniff_closed
        not_accepted = CounterMetricFamily(
            "portmux_not_accepted",
            "Connections closed at accept by a limit, before any protocol (not in accepted), by limit.",
            labels=["limit"])
        for limit in sorted({*NOT_ACCEPTED_LIMITS, *stats.not_accepted}):
            not_accepted.add_metric([limit], stats.not_accepted.get(limit, 0))
        yield not_accepted
        yield GaugeMetricFamily("portmux_sniffing_connections", "Connections being classified now.",
                                value=stats.sniffing)
        yield from _group_metrics(stats)

        connections = CounterMetricFamily(
            "portmux_connections_total", "Connections given to a route (nested routes as outer/inner).",
            labels=["listener", "route"])
        active = GaugeMetricFamily("portmux_active_connections", "Open connections per route.",
                                   labels=["route"])
        transferred = CounterMetricFamily(
            "portmux_bytes", "Bytes on the client side of a route's connections (in: from the client).",
            labels=["route", "direction"], unit="bytes")
        refusals = CounterMetricFamily(
            "portmux_refusals", "Refused connections by reason; route is empty when refused before routing.",
            labels=["listener", "reason", "route"])
        backend_up = GaugeMetricFamily(
            "portmux_backend_up", "1 when a proxy route's backend passes its health checks (or is unchecked).",
            labels=["route", "backend"])
        handshakes = CounterMetricFamily(
            "portmux_tls_handshake_failures", "Failed TLS handshakes at termination routes, by reason.",
            labels=["reason"])
        handshake_reasons: dict[str, int] = {}
        for path, inner_mux, prefix in self._stages():
            inner_stats = inner_mux.stats
            for listener, counters in sorted(inner_stats.listeners.items()):
                for route, count in sorted(counters.routed.items()):
                    connections.add_metric([listener, prefix + route], count)
                for (reason, route), count in sorted(counters.refusals.items()):
                    where = prefix + route if route else path
                    refusals.add_metric([listener, reason, where], count)
            for reason, count in inner_stats.tls_handshake_failures.items():
                handshake_reasons[reason] = handshake_reasons.get(reason, 0) + count
        for entry in walk_routes(mux):
            counters = entry.mux.stats.routes.get(entry.route.name)
            if counters is not None:
                active.add_metric([entry.path], counters.active)
                transferred.add_metric([entry.path, "in"], counters.bytes_in)
                transferred.add_metric([entry.path, "out"], counters.bytes_out)
            if getattr(entry.route.target, "kind", None) == "proxy":
                for backend in backends_of(entry.route.target):
                    backend_up.add_metric([entry.path, backend["name"]], 1 if backend["up"] else 0)
        for reason, count in sorted(handshake_reasons.items()):
            handshakes.add_metric([reason], count)
        yield connections
        yield active
        yield transferred
        yield refusals
        yield backend_up
        yield handshakes

        sniff = HistogramMetricFamily("portmux_sniff_seconds", "Time from accept to a routing decision.",
                                      unit="seconds")
        sniff.add_metric([], _buckets(stats.sniff_seconds), stats.sniff_seconds.sum)
        yield sniff
        connect = HistogramMetricFamily("portmux_connect_seconds", "Time to connect to a proxy backend.",
                                        labels=["backend"], unit="seconds")
        for _path, stage, _prefix in self._stages():
            for backend, histogram in sorted(stage.stats.connect_seconds.items()):
                connect.add_metric([backend], _buckets(histogram), histogram.sum)
        yield connect

        expiry = GaugeMetricFamily(
            "portmux_certificate_expiry_timestamp_seconds", "When a served certificate expires (Unix time).",
            labels=["name"])
        for cert in certificates(mux):
            for name in cert["names"] or [cert["source"]]:
                expiry.add_metric([name], cert["expiry_timestamp"])
        yield expiry
        yield GaugeMetricFamily("portmux_registered_routes", "Routes registered by worker processes.",
                                value=len(getattr(mux, "registered_routes", ())))
        health = registry_health(mux)
        if health is not None:
            yield GaugeMetricFamily(
                "portmux_registry_stale",
                "1 while the shared etcd registry is unreachable (routing with the last table).",
                value=int(health.stale))
            yield GaugeMetricFamily(
                "portmux_registry_remote_routes", "Routes of other nodes learnt from etcd.",
                value=health.snapshot()["remote_routes"])

    def _stages(self) -> Iterator[tuple[str, Any, str]]:
        """(path of the enclosing route, multiplexer, route-name prefix) for the top level and each nested stage."""
        yield "", self.mux, ""
        seen = {id(self.mux)}
        for entry in walk_routes(self.mux):
            inner = getattr(entry.route.target, "inner", None)
            if inner is not None and hasattr(inner, "stats") and id(inner) not in seen:
                seen.add(id(inner))
                yield entry.path, inner, entry.path + "/"


def registry_for(mux: Any) -> CollectorRegistry:
    """A fresh registry with portmux's collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortmuxCollector(mux))
    ProcessCollector(registry=registry)
    return registry


class MetricsPage(Resource):
    """Renders the multiplexer's registry (text format, or OpenMetrics when asked for)."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        mux = request.site.portmux_mux
        registry = mux.shared("prometheus-registry", registry_for)
        encoder, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return bytes(encoder(registry))
