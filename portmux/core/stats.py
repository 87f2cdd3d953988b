# -*- test-case-name: tests.core.test_mux,tests.daemon.test_daemon -*-
"""Live per-route counters owned by one multiplexer (no global state)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


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
        self.elsewhere: dict[str, dict[str, object]] = {}
        """Latest local snapshots of the other processes of a process group, by process label."""

    def for_route(self, name: str) -> RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def snapshot(self, local: bool = False) -> dict[str, object]:
        """A JSON-ready copy of every counter: this process's own (``local``) or the group's sum."""
        mine: dict[str, Any] = {
            "accepted": self.accepted,
            "sniffing": self.sniffing,
            "routes": {name: asdict(c) for name, c in self.routes.items()},
            "refusals": dict(self.refusals),
        }
        if local or not self.elsewhere:
            return mine
        for other in self.elsewhere.values():
            mine["accepted"] += int(other.get("accepted", 0))  # type: ignore[call-overload]
            mine["sniffing"] += int(other.get("sniffing", 0))  # type: ignore[call-overload]
            for name, counters in dict(other.get("routes", {})).items():  # type: ignore[call-overload]
                total = mine["routes"].setdefault(name, {"connections": 0, "active": 0, "refused": 0})
                for key in total:
                    total[key] += int(counters.get(key, 0))
            for status, count in dict(other.get("refusals", {})).items():  # type: ignore[call-overload]
                mine["refusals"][status] = mine["refusals"].get(status, 0) + int(count)
        mine["processes"] = 1 + len(self.elsewhere)
        return mine
