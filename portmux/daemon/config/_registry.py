# -*- test-case-name: tests.daemon.test_registry_config -*-
"""``[registry]``: the etcd cluster nodes share routes through, and routes stored in it.

A route stored at ``PREFIX/routes/NAME`` is JSON with exactly the keys of a
``[[route]]`` table (less ``name``, which the key gives); ``read_stored_route``
checks it with the same declarations, so its problems read like the file's.
See docs/scale-out.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from portmux.core.mux import SniffSettings
from portmux.core.routing import Route
from portmux.daemon.config._document import Document
from portmux.daemon.config._kinds import TargetKind
from portmux.daemon.config._problems import ConfigError, Reporter
from portmux.daemon.config._schema import INVALID, ListOf, Number, Text, Walk, Whole, setting

__all__ = ["RegistryConfig", "read_stored_route"]


def _etcd_url(value: str, key_path: str, walk: Walk) -> Any:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        walk.problem(key_path, f"{value!r} is not an etcd client URL like http://127.0.0.1:2379")
        return INVALID
    return value.rstrip("/")


def _prefix(value: str, key_path: str, walk: Walk) -> Any:
    if not value.startswith("/") or not value.endswith("/") or len(value) < 2:
        walk.problem(key_path, f"{value!r} must start and end with '/', e.g. \"/portmux/\"")
        return INVALID
    return value


def _readable(value: str, key_path: str, walk: Walk) -> Any:
    path = Path(walk.base_dir, value)
    try:
        path.read_bytes()
    except OSError as e:
        walk.problem(key_path, f"cannot read {path}: {e.strerror or e}")
        return INVALID
    return str(path)


def _ttl(value: int, key_path: str, walk: Walk) -> Any:
    if value < 2:
        walk.problem(key_path, "must be at least 2 seconds (etcd's minimum lease)")
        return INVALID
    return value


def _timeout(value: float, key_path: str, walk: Walk) -> Any:
    if value <= 0:
        walk.problem(key_path, "must be positive")
        return INVALID
    return float(value)


@dataclass(frozen=True)
class RegistryConfig:
    """``[registry]``: share registered routes with every node using the same etcd prefix."""

    etcd: tuple[str, ...] = setting(
        ListOf("an array of etcd client URLs", item=Text("a URL", check=_etcd_url), empty="empty: name one etcd URL"),
        "etcd client URLs, tried in turn",
        missing='missing: etcd = ["http://127.0.0.1:2379"]',
    )
    prefix: str = setting(Text(), "the key prefix shared by the nodes of one cluster", default="/portmux/",
                          check=_prefix)
    node: str | None = setting(Text(), "this node's name in registrations (default: the host name)", default=None)
    lease_ttl: int = setting(Whole(), "seconds a dead node's routes outlive it", default=10, check=_ttl)
    timeout: float = setting(Number(), "seconds to wait for each etcd request", default=2, check=_timeout)
    ca: str | None = setting(Text("a path"), "PEM CA certificate for https etcd URLs", default=None, check=_readable)
    cert: str | None = setting(Text("a path"), "PEM client certificate for etcd", default=None, check=_readable)
    key: str | None = setting(Text("a path"), "PEM private key of the client certificate", default=None,
                              check=_readable)
    user: str | None = setting(Text(), "etcd user (etcd authentication)", default=None)
    password: str | None = setting(Text(), "that user's password", default=None)

    def validate(self, key_path: str, walk: Walk) -> RegistryConfig:
        if (self.cert is None) != (self.key is None):
            walk.problem(f"{key_path}.cert", "cert and key go together")
        if self.user is not None and self.password is None:
            walk.problem(f"{key_path}.password", "missing: a user needs its password")
        return self


def read_stored_route(
    name: str,
    raw: bytes,
    source: str,
    reactor: Any,
    kinds: Mapping[str, TargetKind],
    sniff: SniffSettings | None = None,
    taken: Iterable[str] = (),
) -> Route:
    """One route stored as JSON, checked like a ``[[route]]`` table; ConfigError says why not."""
    report = Reporter(source, "")
    document = Document(report, reactor, Path.cwd(), kinds)
    document.sniff_settings = sniff or SniffSettings()
    for other in taken:
        document.claim_route_name(other, "the config file")
    try:
        table = json.loads(raw)
    except ValueError as e:
        report.problem("", f"not JSON: {e}")
        raise ConfigError(report.errors) from None
    if not isinstance(table, dict):
        report.problem("", "expected a JSON object with the keys of a [[route]] table")
        raise ConfigError(report.errors)
    if "name" in table:
        report.problem("name", f"the route's name comes from its key ({name!r}); drop 'name'")
        raise ConfigError(report.errors)
    decl = document.read_route({"name": name, **table}, "")
    routes = document.build_routes([decl]) if not report.errors else []
    if report.errors or not routes:
        raise ConfigError(report.errors)
    return routes[0]
