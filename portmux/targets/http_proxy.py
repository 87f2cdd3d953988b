# -*- test-case-name: tests.targets.test_http_proxy,tests.targets.test_http_upgrade -*-
"""The HTTP reverse-proxy target: each request on a kept-alive connection to its own route.

An HTTP connection routed here is served by the multiplexer's one Site (as
``resource`` routes are), so every request — HTTP/1.1 keep-alive, or each stream
of an HTTP/2 connection after TLS termination — is matched on Host and path
again and, when it lands on this target, forwarded as an HTTP/1.1 request over a
pooled keep-alive connection (portmux.targets._http_exchange).  Anything that is
not HTTP (or ``per_request=False``, or a PROXY header to send) falls back to the
byte-for-byte ``ProxyTarget``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from zope.interface import implementer

from portmux.core.interfaces import ITarget
from portmux.targets._http_exchange import FORWARDED_STYLES, HttpExchange
from portmux.targets._http_pool import BackendPool
from portmux.targets.proxy import ProxyTarget
from portmux.targets.resource import serve_http


@implementer(ITarget)
class HttpProxyTarget:
    """Proxy HTTP per request to ``endpoints`` (round-robin, failover), whole connections otherwise.

    ``pool_size`` idle keep-alive connections are kept per backend for
    ``idle_timeout`` seconds; ``forwarded`` is None, "x-forwarded", "forwarded"
    or "both"; ``max_body`` (bytes) refuses larger request bodies with 413;
    ``per_request=None`` means per request for HTTP connections unless a PROXY
    header is to be sent (which only makes sense per connection).
    """

    kind = "proxy"

    def __init__(
        self,
        reactor: Any = None,
        endpoints: Sequence[str | IStreamClientEndpoint] | str | None = None,
        connect_timeout: float | None = None,
        proxy_header: str | None = None,
        timeouts: dict[str, float] | None = None,
        rewrite_via: bool | str = False,
        per_request: bool | None = None,
        pool_size: int = 16,
        idle_timeout: float = 30.0,
        forwarded: str | None = None,
        max_body: int | None = None,
        withdraw_status: int | None = None,
    ) -> None:
        if forwarded is not None and forwarded not in FORWARDED_STYLES:
            raise ValueError(f"forwarded must be one of {', '.join(FORWARDED_STYLES)}, not {forwarded!r}")
        self.whole = ProxyTarget(reactor, endpoints, connect_timeout=connect_timeout,
                                 proxy_header=proxy_header, timeouts=timeouts, rewrite_via=rewrite_via)
        self.per_request = per_request if per_request is not None else proxy_header is None
        self.pool_size = pool_size
        self.idle_timeout = idle_timeout
        self.forwarded = forwarded
        self.max_body = max_body
        self.pools: dict[int, BackendPool] = {}
        self.first = 0
        self.withdraw_status = withdraw_status
        self.in_flight: set[HttpExchange] = set()
        self.description = self.whole.description

    @property
    def endpoints(self) -> tuple[Any, ...]:
        return self.whole.endpoints

    @property
    def backends(self) -> tuple[Any, ...]:
        return self.whole.backends

    @property
    def reactor(self) -> Any:
        return self.whole.reactor

    @property
    def proxy_header(self) -> str | None:
        return self.whole.proxy_header

    @property
    def connect_timeout(self) -> float:
        return float(self.whole.connect_timeout)

    @property
    def health(self) -> Any:
        """The backends' health checker (portmux.targets._health), shared with whole connections."""
        return self.whole.health

    @health.setter
    def health(self, checker: Any) -> None:
        self.whole.health = checker

    def bind(self, reactor: Any) -> None:
        """Dial with ``reactor`` from now on."""
        self.whole.bind(reactor)

    def __getattr__(self, name: str) -> Any:
        """Everything else about the backends (timeouts, rewrite_via, all_backends…) is the
        whole-connection target's."""
        if name == "whole":
            raise AttributeError(name)
        return getattr(self.whole, name)

    def start(self) -> None:
        """Start health checks, if configured; pools fill on demand."""
        self.whole.start()

    def stop(self) -> None:
        """Close the idle keep-alive connections; with ``withdraw_status`` (a worker's
        registration ended) also answer the requests in flight with it."""
        self.whole.stop()
        for pool in self.pools.values():
            pool.close()
        if self.withdraw_status is not None:
            for exchange in list(self.in_flight):
                exchange.fail(self.withdraw_status, "service unavailable",
                              "the worker serving this prefix went away")

    def attach(self, connection: Any) -> IProtocol | None:
        """HTTP goes to the per-request Site; anything else byte-for-byte to a backend."""
        if self.per_request and connection.preamble.protocol == "http":
            return serve_http(connection)
        return self.whole.attach(connection)

    def _pools(self) -> list[BackendPool]:
        """The pools of the backends in rotation (the healthy ones), next one first."""
        whole = self.whole
        backends = whole.backends
        if not backends:
            return []
        pools = []
        for backend in backends:
            pool = self.pools.get(id(backend))
            if pool is None:
                pool = self.pools[id(backend)] = BackendPool(
                    whole.reactor, backend.endpoint, self.pool_size, self.idle_timeout,
                    self.connect_timeout)
                if isinstance(backend.name, str):
                    pool.name = backend.name
            pools.append(pool)
        first = self.first % len(pools)
        self.first = first + 1
        return pools[first:] + pools[:first]

    def start_exchange(self, request: Any, route: Any, head: tuple[bytes, bytes],
                       length: int | None, dispatcher: Any) -> HttpExchange:
        """Forward ``request`` (its body still arriving) to a backend."""
        if self.whole.reactor is None:
            self.whole.bind(dispatcher.reactor)
        preamble, client = dispatcher.facts(request, head[1])
        exchange = HttpExchange(
            self._pools, request, head, length, client, bool(preamble.tls_terminated or request.isSecure()),
            self.forwarded, self.max_body, route.name, self.in_flight.discard,
            dispatcher.connection_of(request),
        )
        if not exchange.finished:
            self.in_flight.add(exchange)
        return exchange


__all__ = ["HttpProxyTarget"]
