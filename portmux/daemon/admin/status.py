# -*- test-case-name: tests.daemon.test_status_page,tests.daemon.test_daemon -*-
"""The built-in status page: a live HTML page, ``/status.json`` it polls, and ``/metrics``.

The page itself is static (HTML, CSS and JavaScript shipped in ``static/``, no
external assets); it fetches ``status.json`` every second and updates in place.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, cast

from twisted.web.resource import IResource, Resource

from portmux.daemon.admin.inventory import backends_of, certificates, walk_routes
from portmux.daemon.admin.metrics import MetricsPage

Metrics = MetricsPage  # the old name

_EMPTY = {"connections": 0, "active": 0, "refused": 0, "bytes_in": 0, "bytes_out": 0}
from portmux.control._cluster import registry_health


def status_snapshot(mux: Any) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready data."""
    counters = mux.stats.snapshot()
    routes = []
    refusals: dict[str, int] = {}
    for entry in walk_routes(mux):
        route = entry.route
        stage = entry.mux.stats.snapshot()
        item: dict[str, Any] = {
            "name": route.name,
            "path": entry.path,
            "depth": entry.depth,
            "match": route.match.describe(),
            "target": route.kind,
            "description": str(getattr(route.target, "description", route.kind)),
            "registered": entry.registered,
            "counters": stage["routes"].get(route.name, dict(_EMPTY)),
        }
        if route.kind == "proxy":
            item["backends"] = backends_of(route.target)
        routes.append(item)
    for stage_mux in _stages(mux):
        for reason, count in stage_mux.stats.snapshot()["refusals"].items():  # group sums too
            refusals[reason] = refusals.get(reason, 0) + count
    addresses = {}
    for text in mux.listeners:
        name, _, address = text.partition(" (")
        addresses[name] = address.rstrip(")")
    listeners = []
    for name in dict.fromkeys([*addresses, *counters["listeners"]]):
        listener = counters["listeners"].get(name, {})
        listeners.append({"name": name, "address": addresses.get(name), "listening": name in addresses,
                          **listener})
    health = registry_health(mux)
    snapshot: dict[str, Any] = {
        "now": mux.reactor.seconds(),
        "portmux_registry_stale": bool(health and health.stale),
        "registry": health.snapshot() if health is not None else None,
        "listeners": listeners,
        "probes": [probe.name for probe in mux.probes],
        "sniff": {
            "preamble_timeout": mux.settings.preamble_timeout,
            "preamble_max_bytes": mux.settings.preamble_max_bytes,
            "silence_timeout": mux.settings.silence_timeout,
        },
        "connections": {"accepted": counters["accepted"], "sniffing": counters["sniffing"],
                        "open": len(getattr(mux, "connections", ()))},
        "processes": counters.get("processes", 1),  # a process group's members (daemon/group.py)
        "refusals": refusals,
        "routes": routes,
        "certificates": certificates(mux),
        "workers": [],
    }
    for extra in mux.shared("status-extras", lambda _: []):
        snapshot.update(extra())
    return snapshot


def _stages(mux: Any) -> list[Any]:
    out = [mux]
    for entry in walk_routes(mux):
        inner = getattr(entry.route.target, "inner", None)
        if inner is not None and hasattr(inner, "stats") and inner not in out:
            out.append(inner)
    return out


def _mux_of(request: Any) -> Any:
    return request.site.portmux_mux


class StatusJSON(Resource):
    """``/status.json``: the snapshot as JSON."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status_snapshot(_mux_of(request)), indent=1).encode() + b"\n"


class _Static(Resource):
    """One file shipped in ``portmux/daemon/admin/static``."""

    isLeaf = True

    def __init__(self, name: str, content_type: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.body = resources.files("portmux.daemon.admin").joinpath("static", name).read_bytes()
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.body


class StatusPage(Resource):
    """``/``: the live page; children ``status.json``, ``metrics``, ``status.js``, ``status.css``."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.page = _Static("status.html", b"text/html; charset=utf-8")
        self.putChild(b"status.json", cast(IResource, StatusJSON()))  # type: ignore[no-untyped-call]
        self.putChild(b"metrics", cast(IResource, MetricsPage()))  # type: ignore[no-untyped-call]
        self.putChild(b"status.js", cast(IResource, _Static("status.js", b"text/javascript; charset=utf-8")))
        self.putChild(b"status.css", cast(IResource, _Static("status.css", b"text/css; charset=utf-8")))

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        return cast(Resource, super().getChild(path, request))  # type: ignore[no-untyped-call]

    def render_GET(self, request: Any) -> bytes:
        if not request.path.endswith(b"/"):  # the page's links are relative to its directory
            from twisted.web.util import redirectTo

            return redirectTo(request.path + b"/", request)
        return self.page.render_GET(request)
