# -*- test-case-name: tests.daemon.test_daemon -*-
"""The built-in status page: listeners, routes and live counters as HTML, JSON and metrics."""

from __future__ import annotations

import html
import json
from typing import Any, cast

from twisted.web.resource import IResource, Resource


def status_snapshot(mux: Any) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready data."""
    counters = mux.stats.snapshot()
    per_route = counters["routes"]
    registered = {id(r) for r in mux.registered_routes}
    routes = []
    for route in mux.router.routes:
        routes.append(
            {
                "name": route.name,
                "match": route.match.describe(),
                "target": route.kind,
                "description": getattr(route.target, "description", route.kind),
                "registered": id(route) in registered,
                "counters": per_route.get(
                    route.name, {"connections": 0, "active": 0, "refused": 0}
                ),
            }
        )
    return {
        "listeners": list(mux.listeners),
        "probes": [probe.name for probe in mux.probes],
        "sniff": {
            "preamble_timeout": mux.settings.preamble_timeout,
            "preamble_max_bytes": mux.settings.preamble_max_bytes,
            "silence_timeout": mux.settings.silence_timeout,
        },
        "connections": {"accepted": counters["accepted"], "sniffing": counters["sniffing"]},
        "processes": counters.get("processes", 1),
        "refusals": counters["refusals"],
        "routes": routes,
    }


def _mux_of(request: Any) -> Any:
    return request.site.portmux_mux


class StatusJSON(Resource):
    """``/status.json``: the snapshot as JSON."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status_snapshot(_mux_of(request)), indent=2).encode() + b"\n"


class Metrics(Resource):
    """``/metrics``: per-route counters in the Prometheus text format."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        snap = status_snapshot(_mux_of(request))
        lines = [
            "# TYPE portmux_accepted_total counter",
            f"portmux_accepted_total {snap['connections']['accepted']}",
            "# TYPE portmux_sniffing gauge",
            f"portmux_sniffing {snap['connections']['sniffing']}",
            "# TYPE portmux_processes gauge",
            f"portmux_processes {snap['processes']}",
            "# TYPE portmux_route_connections_total counter",
            "# TYPE portmux_route_active gauge",
            "# TYPE portmux_route_refused_total counter",
        ]
        for route in snap["routes"]:
            label = json.dumps(route["name"])
            c = route["counters"]
            lines.append(f"portmux_route_connections_total{{route={label}}} {c['connections']}")
            lines.append(f"portmux_route_active{{route={label}}} {c['active']}")
            lines.append(f"portmux_route_refused_total{{route={label}}} {c['refused']}")
        lines.append("# TYPE portmux_refusals_total counter")
        for status, count in sorted(snap["refusals"].items()):
            lines.append(f'portmux_refusals_total{{status="{status}"}} {count}')
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        return ("\n".join(lines) + "\n").encode()


class StatusPage(Resource):
    """``/``: a small HTML page; children ``status.json`` and ``metrics``."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.putChild(b"status.json", cast(IResource, StatusJSON()))  # type: ignore[no-untyped-call]
        self.putChild(b"metrics", cast(IResource, Metrics()))  # type: ignore[no-untyped-call]

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        return cast(Resource, super().getChild(path, request))  # type: ignore[no-untyped-call]

    def render_GET(self, request: Any) -> bytes:
        snap = status_snapshot(_mux_of(request))
        esc = html.escape
        rows = "".join(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td><td>{}</td></tr>".format(
                esc(r["name"]),
                esc(r["match"]),
                esc(r["description"]),
                "registered" if r["registered"] else "static",
                r["counters"]["connections"],
                r["counters"]["active"],
                r["counters"]["refused"],
            )
            for r in snap["routes"]
        )
        listeners = "".join(f"<li><code>{esc(x)}</code></li>" for x in snap["listeners"])
        refusals = ", ".join(f"{k}: {v}" for k, v in sorted(snap["refusals"].items())) or "none"
        page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>portmux status</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head>
<body><h1>portmux</h1>
<h2>Listeners</h2><ul>{listeners}</ul>
<p>Processes: {snap['processes']}. Connections accepted: {snap['connections']['accepted']};
being sniffed now: {snap['connections']['sniffing']}; refusals: {esc(refusals)}.</p>
<h2>Routes</h2>
<table><tr><th>name</th><th>match</th><th>target</th><th>source</th>
<th>connections</th><th>active</th><th>refused</th></tr>{rows}</table>
<p>Probes, in order: {esc(', '.join(snap['probes']))}.
Also: <a href="status.json">status.json</a>, <a href="metrics">metrics</a>.</p>
</body></html>
"""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return page.encode("utf-8")
