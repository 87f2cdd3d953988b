# -*- test-case-name: tests.core.test_mux,tests.daemon.test_daemon -*-
"""Live per-route counters owned by one multiplexer (no global state)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class RouteCounters:
    """Counters for one route: connections taken, open now, refused/failed."""

    connections: int = 0
    active: int = 0
    refused: int = 0


class Stats:
    """Counters per route name plus refusals by reason."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteCounters] = {}
        self.refusals: Counter[str] = Counter()
        self.accepted = 0
        self.sniffing = 0

    def for_route(self, name: str) -> RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy of every counter."""
        return {
            "accepted": self.accepted,
            "sniffing": self.sniffing,
            "routes": {name: asdict(c) for name, c in self.routes.items()},
            "refusals": dict(self.refusals),
        }
