# -*- test-case-name: tests.daemon.test_metric_counts,tests.daemon.test_group_metrics -*-
"""One process's summable numbers behind ``/metrics``, as JSON-ready nested dicts.

Labels are nested keys (``connections[listener][route]``), so a process group's
members' counts add up key by key (``add_into``) into the group's, and travel
over the group's counters channel as they are.  Histograms are kept as
cumulative bucket counts keyed by upper bound, plus their sum: bucket-wise
addition of cumulative counts is still cumulative.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from portmux.core.stats import Histogram, add_into
from portmux.daemon.admin.inventory import walk_routes

__all__ = ["GAUGES", "histogram_counts", "metric_counts", "retired", "stages", "summed"]

GAUGES = ("sniffing", "active")
"""Top-level keys that are gauges (now, not totals): a process that ended takes them with it."""


def stages(mux: Any) -> Iterator[tuple[str, Any, str]]:
    """(path of the enclosing route, multiplexer, route-name prefix) for the top level and each nested stage."""
    yield "", mux, ""
    seen = {id(mux)}
    for entry in walk_routes(mux):
        inner = getattr(entry.route.target, "inner", None)
        if inner is not None and hasattr(inner, "stats") and id(inner) not in seen:
            seen.add(id(inner))
            yield entry.path, inner, entry.path + "/"


def histogram_counts(histogram: Histogram) -> dict[str, Any]:
    """Cumulative counts by upper bound (``+Inf`` last) and the sum of observations."""
    return {"buckets": {"+Inf" if bound == float("inf") else repr(bound): count
                        for bound, count in histogram.cumulative()},
            "sum": histogram.sum}


def _inc(table: dict[str, Any], keys: Iterable[str], value: float) -> None:
    """``table[k1][k2]…[kn] += value``, creating the levels on the way."""
    *path, last = keys
    for key in path:
        table = table.setdefault(key, {})
    table[last] = table.get(last, 0) + value


def metric_counts(mux: Any) -> dict[str, Any]:
    """This process's own counters and gauges (every nested stage too), labels as nested keys."""
    stats = mux.stats
    counts: dict[str, Any] = {
        "accepted": {}, "closed_while_sniffing": {}, "not_accepted": dict(stats.not_accepted),
        "sniffing": stats.sniffing, "connections": {}, "refusals": {}, "active": {}, "bytes": {},
        "tls_handshake_failures": {}, "sniff_seconds": histogram_counts(stats.sniff_seconds),
        "connect_seconds": {},
        "process": {"accepted": stats.accepted, "open": len(getattr(mux, "connections", ()))},
    }
    for listener, counters in stats.listeners.items():
        counts["accepted"][listener] = counters.accepted
        counts["closed_while_sniffing"][listener] = counters.closed_sniffing
    for path, stage, prefix in stages(mux):
        for listener, counters in stage.stats.listeners.items():
            for route, count in counters.routed.items():
                _inc(counts["connections"], (listener, prefix + route), count)
            for (reason, route), count in counters.refusals.items():
                _inc(counts["refusals"], (listener, reason, prefix + route if route else path), count)
        for reason, count in stage.stats.tls_handshake_failures.items():
            _inc(counts["tls_handshake_failures"], (reason,), count)
        for backend, histogram in stage.stats.connect_seconds.items():
            add_into(counts["connect_seconds"].setdefault(backend, {}), histogram_counts(histogram))
    for entry in walk_routes(mux):
        route_counters = entry.mux.stats.routes.get(entry.route.name)
        if route_counters is not None:
            counts["active"][entry.path] = route_counters.active
            counts["bytes"][entry.path] = {"in": route_counters.bytes_in, "out": route_counters.bytes_out}
    return counts


def retired(counts: dict[str, Any]) -> dict[str, Any]:
    """A copy of an ended process's counts with its gauges dropped: only its totals live on."""
    kept = {key: copy.deepcopy(value) for key, value in counts.items() if key not in GAUGES}
    process = kept.get("process")
    if isinstance(process, dict):
        process.pop("open", None)
    return kept


def summed(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The key-by-key sum of several processes' counts (none of them changed)."""
    total: dict[str, Any] = {}
    for part in parts:
        add_into(total, part)
    return total
