# -*- test-case-name: tests.daemon.test_metrics,tests.daemon.test_status_page -*-
"""What a running multiplexer holds, walked once for the status page and the metrics.

Routes nested under a TLS termination route are listed under it with their full
path (``https/site``); backends come with their health (when checked); TLS
certificates with their expiry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["RouteEntry", "backends_of", "certificates", "walk_routes"]


@dataclass(frozen=True)
class RouteEntry:
    """One route, possibly nested: its path, the multiplexer that holds it, its depth."""

    path: str
    route: Any
    mux: Any
    depth: int
    registered: bool


def walk_routes(mux: Any, prefix: str = "", depth: int = 0) -> Iterator[RouteEntry]:
    """Every route of ``mux``, each followed by the routes nested in its target."""
    registered = {id(r) for r in getattr(mux, "registered_routes", ())}
    for route in mux.router.routes:
        path = f"{prefix}{route.name}"
        yield RouteEntry(path, route, mux, depth, id(route) in registered)
        inner = getattr(route.target, "inner", None)
        if inner is not None and hasattr(inner, "router"):
            yield from walk_routes(inner, path + "/", depth + 1)


def backends_of(target: Any) -> list[dict[str, Any]]:
    """A proxy target's backends with up/down state and last check (unchecked ones count as up)."""
    every = getattr(target, "all_backends", None) or getattr(target, "backends", None)
    if not every:
        endpoints = getattr(target, "endpoints", ())
        return [{"name": str(e), "up": True, "checked": False} for e in endpoints if isinstance(e, str)]
    health = getattr(target, "health", None)
    states = health.states if health is not None else {}
    out = []
    for backend in every:
        state = states.get(backend.name)
        entry: dict[str, Any] = {"name": backend.name, "up": True, "checked": state is not None}
        if state is not None:
            entry.update(state.as_dict())
        out.append(entry)
    return out


def certificates(mux: Any) -> list[dict[str, Any]]:
    """Every certificate served by a TLS termination route, with its names and expiry."""
    seen: set[int] = set()
    out = []
    for entry in walk_routes(mux):
        store = getattr(entry.route.target, "store", None)
        if store is None or id(store) in seen:
            continue
        seen.add(id(store))
        for key in getattr(store, "keys", ()):
            expires = key.certificate.not_valid_after_utc
            out.append({
                "route": entry.path,
                "source": str(key.source),
                "names": list(key.names),
                "not_after": expires.isoformat(),
                "expiry_timestamp": expires.timestamp(),
            })
    return out
