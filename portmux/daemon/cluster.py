# -*- test-case-name: tests.daemon.test_cluster_daemon -*-
"""The daemon's side of ``[registry]``: an etcd client and Cluster built from the config.

Routes stored in etcd sit after the file's routes (and so before ``default``, which
the Router tries last); a reload keeps them. See docs/scale-out.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from portmux.control._cluster import Cluster
from portmux.control._etcd import EtcdClient
from portmux.core.routing import Route


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class StoredRoutes:
    """The config file's routes plus the routes stored in etcd, given to the multiplexer together."""

    def __init__(self, mux: Any, config: Any) -> None:
        self.mux = mux
        self.config = config
        self.stored: tuple[Route, ...] = ()

    def set_config(self, config: Any) -> None:
        """A reload: new file routes, the stored ones kept."""
        self.config = config
        self.mux.set_static_routes(tuple(config.routes) + self.stored)

    def set_stored(self, routes: list[Route]) -> None:
        """etcd's routes changed."""
        self.stored = tuple(routes)
        self.mux.set_static_routes(tuple(self.config.routes) + self.stored)

    def reader(self, reactor: Any, prefix: str) -> Callable[[str, bytes], Route]:
        """``read_route(name, raw)`` for the Cluster: the config checker's verdict, as ValueError."""
        from portmux.daemon.config import ConfigError, read_stored_route, target_kinds

        kinds = target_kinds()

        def read_route(name: str, raw: bytes) -> Route:
            try:
                return read_stored_route(name, raw, f"etcd:{prefix}routes/{name}", reactor, kinds,
                                         self.config.sniff, taken=[r.name for r in self.config.routes])
            except ConfigError as error:
                raise ValueError(str(error)) from None

        return read_route


def build_cluster(reactor: Any, mux: Any, registry: Any, routes: StoredRoutes) -> Cluster:
    """A Cluster for the ``[registry]`` table ``registry``."""
    client = EtcdClient(
        reactor, registry.etcd, timeout=float(registry.timeout), user=registry.user, password=registry.password,
        ca=_read(registry.ca), cert=_read(registry.cert), key=_read(registry.key),
    )
    return Cluster(reactor, client, mux, prefix=registry.prefix, node=registry.node, lease_ttl=registry.lease_ttl,
                   read_route=routes.reader(reactor, registry.prefix), set_etcd_routes=routes.set_stored)
