# -*- test-case-name: tests.daemon.test_metrics -*-
"""``/metrics``: portmux's live counters through prometheus_client, a fresh registry per scrape.

A custom Collector reads the multiplexer's Stats (and its nested TLS stages, as
``metric_counts``) at scrape time; nothing is counted twice and no global registry
is used. The page is rendered in the reactor thread (the counters are only touched
there).  In a process group every member answers with the group's sums, kept by the
parent (daemon/group_metrics.py); ``process_*`` and the health, certificate and
registry gauges are the answering process's own.

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
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from portmux.control._cluster import registry_health
from portmux.daemon.admin.inventory import backends_of, certificates, walk_routes
from portmux.daemon.admin.metric_counts import metric_counts

log = Logger(namespace="portmux")

__all__ = ["MetricsPage", "PortmuxCollector", "registry_for"]

NOT_ACCEPTED_LIMITS = ("max_connections", "per_source_limit")
"""The limits that close a connection at accept (Multiplexer.admit), each always exported."""


def _buckets(histogram: dict[str, Any]) -> list[tuple[str, float]]:
    """``histogram_counts``' cumulative buckets in bound order (``+Inf`` last)."""
    buckets = histogram.get("buckets", {})
    return sorted(buckets.items(), key=lambda item: float("inf") if item[0] == "+Inf" else float(item[0]))


def _group_metrics(view: dict[str, Any]) -> Iterator[Metric]:
    """In a process group (daemon/group.py): its size and each member's accepted and open connections.

    One series per member (bounded by ``processes``); a replaced member's number
    keeps its predecessors' accepted total, so each series only grows.
    """
    yield GaugeMetricFamily("portmux_processes", "Running members of this process group (processes = N).",
                            value=view.get("processes", 1))
    accepted = CounterMetricFamily(
        "portmux_group_accepted_connections",
        "Connections accepted by each member of this process group, by member number (1: the parent).",
        labels=["process"])
    open_now = GaugeMetricFamily(
        "portmux_group_open_connections", "Open connections in each member of this process group.",
        labels=["process"])
    for label, member in sorted(view.get("members", {}).items(), key=lambda item: int(item[0])):
        accepted.add_metric([label], float(member.get("accepted", 0)))
        open_now.add_metric([label], float(member.get("open", 0)))
    yield accepted
    yield open_now
    yield GaugeMetricFamily(
        "portmux_group_answering_process",
        "The member that answered this scrape (1: the parent); the process_* metrics are its own.",
        value=view.get("answering", 1))


class PortmuxCollector(Collector):
    """portmux's families: the counts of ``view`` (a process group's sums) or, without one, this
    process's live counts; health, certificates and the registry are always this process's own."""

    def __init__(self, mux: Any, view: dict[str, Any] | None = None) -> None:
        self.mux = mux
        self.view = view

    def collect(self) -> Iterator[Metric]:
        mux = self.mux
        counts = self.view["counts"] if self.view is not None else metric_counts(mux)
        yield from _counted(counts)
        if self.view is not None:
            yield from _group_metrics(self.view)
        yield from _local(mux)


def _counted(counts: dict[str, Any]) -> Iterator[Metric]:
    """The families of ``metric_counts``' numbers (one process's, or a group's sums)."""
    accepted = CounterMetricFamily(
        "portmux_accepted_connections", "Connections accepted by a listener.", labels=["listener"])
    sniff_closed = CounterMetricFamily(
        "portmux_closed_while_sniffing", "Connections closed by the client before being classified.",
        labels=["listener"])
    for listener, count in sorted(counts.get("accepted", {}).items()):
        accepted.add_metric([listener], count)
    for listener, count in sorted(counts.get("closed_while_sniffing", {}).items()):
        sniff_closed.add_metric([listener], count)
    yield accepted
    yield sniff_closed
    not_accepted = CounterMetricFamily(
        "portmux_not_accepted",
        "Connections closed at accept by a limit, before any protocol (not in accepted), by limit.",
        labels=["limit"])
    limits = counts.get("not_accepted", {})
    for limit in sorted({*NOT_ACCEPTED_LIMITS, *limits}):
        not_accepted.add_metric([limit], limits.get(limit, 0))
    yield not_accepted
    yield GaugeMetricFamily("portmux_sniffing_connections", "Connections being classified now.",
                            value=counts.get("sniffing", 0))

    connections = CounterMetricFamily(
        "portmux_connections_total", "Connections given to a route (nested routes as outer/inner).",
        labels=["listener", "route"])
    for listener, routes in sorted(counts.get("connections", {}).items()):
        for route, count in sorted(routes.items()):
            connections.add_metric([listener, route], count)
    active = GaugeMetricFamily("portmux_active_connections", "Open connections per route.", labels=["route"])
    for route, count in sorted(counts.get("active", {}).items()):
        active.add_metric([route], count)
    transferred = CounterMetricFamily(
        "portmux_bytes", "Bytes on the client side of a route's connections (in: from the client).",
        labels=["route", "direction"], unit="bytes")
    for route, directions in sorted(counts.get("bytes", {}).items()):
        for direction in ("in", "out"):
            transferred.add_metric([route, direction], directions.get(direction, 0))
    refusals = CounterMetricFamily(
        "portmux_refusals", "Refused connections by reason; route is empty when refused before routing.",
        labels=["listener", "reason", "route"])
    for listener, reasons in sorted(counts.get("refusals", {}).items()):
        for reason, routes in sorted(reasons.items()):
            for route, count in sorted(routes.items()):
                refusals.add_metric([listener, reason, route], count)
    handshakes = CounterMetricFamily(
        "portmux_tls_handshake_failures", "Failed TLS handshakes at termination routes, by reason.",
        labels=["reason"])
    for reason, count in sorted(counts.get("tls_handshake_failures", {}).items()):
        handshakes.add_metric([reason], count)
    yield connections
    yield active
    yield transferred
    yield refusals
    yield handshakes

    sniff = HistogramMetricFamily("portmux_sniff_seconds", "Time from accept to a routing decision.",
                                  unit="seconds")
    sniffed = counts.get("sniff_seconds", {})
    sniff.add_metric([], _buckets(sniffed), sniffed.get("sum", 0.0))
    yield sniff
    connect = HistogramMetricFamily("portmux_connect_seconds", "Time to connect to a proxy backend.",
                                    labels=["backend"], unit="seconds")
    for backend, histogram in sorted(counts.get("connect_seconds", {}).items()):
        connect.add_metric([backend], _buckets(histogram), histogram.get("sum", 0.0))
    yield connect


def _local(mux: Any) -> Iterator[Metric]:
    """This process's own view: backend health, certificates, registered routes, the etcd registry."""
    backend_up = GaugeMetricFamily(
        "portmux_backend_up", "1 when a proxy route's backend passes its health checks (or is unchecked).",
        labels=["route", "backend"])
    for entry in walk_routes(mux):
        if getattr(entry.route.target, "kind", None) == "proxy":
            for backend in backends_of(entry.route.target):
                backend_up.add_metric([entry.path, backend["name"]], 1 if backend["up"] else 0)
    yield backend_up
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


def registry_for(mux: Any, view: dict[str, Any] | None = None) -> CollectorRegistry:
    """A fresh registry with portmux's collector (of ``view``, a group's numbers, if given) and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortmuxCollector(mux, view))
    ProcessCollector(registry=registry)
    return registry


class MetricsPage(Resource):
    """Renders the registry (text format, or OpenMetrics when asked for); in a process group,
    of the group's numbers, which may first be asked of the parent (daemon/group_metrics.py)."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        mux = request.site.portmux_mux
        sources = mux.shared("group-metrics", lambda _: [])
        if not sources:
            return self._rendered(request, registry_for(mux))
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(view: dict[str, Any]) -> None:
            if not gone:
                request.write(self._rendered(request, registry_for(mux, view)))
                request.finish()

        def unanswered(reason: Failure) -> None:
            log.warn("/metrics: no group totals: {why}", why=reason.getErrorMessage())  # noqa: G010
            if not gone:
                request.setResponseCode(503)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write(b"the process group's totals are unavailable; try again\n")
                request.finish()

        maybeDeferred(sources[-1]).addCallbacks(answer, unanswered)
        return NOT_DONE_YET

    @staticmethod
    def _rendered(request: Any, registry: CollectorRegistry) -> bytes:
        encoder, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return bytes(encoder(registry))
