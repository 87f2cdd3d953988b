# -*- test-case-name: tests.core.test_mux,tests.core.test_accounting,tests.daemon.test_daemon -*-
"""Live counters owned by one multiplexer (no global state).

Every accepted connection ends in exactly one of: routed (``connections`` of a
route), refused before a route was chosen (``refusals`` with no route), or
closed while being sniffed; ``sniffing`` counts the ones still undecided.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

SNIFF_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class RouteCounters:
    """Counters for one route: connections taken, open now, refused/failed, bytes."""

    connections: int = 0
    active: int = 0
    refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class Histogram:
    """Observations counted into fixed buckets (upper bounds), with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count of observations <= it) pairs, ending with +Inf."""
        total, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass
class ListenerCounters:
    """Per listener: accepted, routed per route, refused per (reason, route), closed while sniffing."""

    accepted: int = 0
    closed_sniffing: int = 0
    routed: Counter[str] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)


class Stats:
    """Counters per route name, per listener, refusals by reason, timing histograms.

    ``observers`` are called with each finished connection's ConnectionRecord
    (the access log is one); with none, no record is built.
    """

    def __init__(self) -> None:
        self.routes: dict[str, RouteCounters] = {}
        self.refusals: Counter[str] = Counter()
        self.not_accepted: Counter[str] = Counter()
        """Connections closed at accept by a limit, before any protocol (not in ``accepted``)."""
        self.listeners: dict[str, ListenerCounters] = {}
        self.tls_handshake_failures: Counter[str] = Counter()
        self.sniff_seconds = Histogram(SNIFF_BUCKETS)
        self.connect_seconds: dict[str, Histogram] = {}
        self.observers: list[Callable[[Any], None]] = []
        self.accepted = 0
        self.sniffing = 0
        self.elsewhere: dict[str, dict[str, object]] = {}
        """Latest local snapshots of the other processes of a process group, by process label."""

    def for_route(self, name: str) -> RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def for_listener(self, name: str) -> ListenerCounters:
        counters = self.listeners.get(name)
        if counters is None:
            counters = self.listeners[name] = ListenerCounters()
        return counters

    def refused(self, listener: str, reason: str, route: str | None) -> None:
        """Count one refusal; ``route`` is the route that refused, None before routing."""
        self.refusals[reason] += 1
        self.for_listener(listener).refusals[(reason, route or "")] += 1

    def connected(self, backend: str, seconds: float) -> None:
        """A proxy reached ``backend`` after ``seconds``."""
        histogram = self.connect_seconds.get(backend)
        if histogram is None:
            histogram = self.connect_seconds[backend] = Histogram(CONNECT_BUCKETS)
        histogram.observe(seconds)

    def snapshot(self, local: bool = False) -> dict[str, object]:
        """A JSON-ready copy of every counter: this process's own (``local``) or its group's sums."""
        mine: dict[str, Any] = {
            "accepted": self.accepted,
            "sniffing": self.sniffing,
            "routes": {name: asdict(c) for name, c in self.routes.items()},
            "refusals": dict(self.refusals),
            "not_accepted": dict(self.not_accepted),
            "listeners": {
                name: {
                    "accepted": c.accepted,
                    "closed_while_sniffing": c.closed_sniffing,
                    "routed": dict(c.routed),
                    "refused": sum(c.refusals.values()),
                }
                for name, c in self.listeners.items()
            },
            "tls_handshake_failures": dict(self.tls_handshake_failures),
        }
        if local or not self.elsewhere:
            return mine
        for other in self.elsewhere.values():
            add_into(mine, other)
        mine["processes"] = 1 + len(self.elsewhere)
        return mine


def add_into(total: dict[str, Any], other: dict[str, Any]) -> None:
    """Add every number of the JSON-ready ``other`` into ``total``, key by key, nested dicts too."""
    for key, value in other.items():
        if isinstance(value, dict):
            inner = total.get(key)
            if not isinstance(inner, dict):
                inner = total[key] = {}
            add_into(inner, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            current = total.get(key, 0)
            total[key] = (current if isinstance(current, (int, float)) else 0) + value
