# -*- test-case-name: tests.core.test_endpoint -*-
"""Part of a multiplexer as a server endpoint: any Twisted server can listen on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from zope.interface import implementer

if TYPE_CHECKING:
    from portmux.core.mux import Multiplexer
    from portmux.core.routing import Route

UNBOUND = IPv4Address("TCP", "0.0.0.0", 0)
"""getHost's answer while the multiplexer listens nowhere."""


@implementer(IStreamServerEndpoint)
class RouteEndpoint:
    """Listening here adds a route with the factory; built by ``Multiplexer.endpoint``."""

    def __init__(self, mux: Multiplexer, name: str | None, match: dict[str, Any]) -> None:
        self.mux = mux
        self.name = name
        self.match = dict(match)

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        route = self.mux.add_route(factory, name=self.name, **self.match)
        return succeed(RoutePort(self.mux, route))


@implementer(IListeningPort)
class RoutePort:
    """One route of a multiplexer, seen as a listening port."""

    def __init__(self, mux: Multiplexer, route: Route) -> None:
        self.mux = mux
        self.route = route

    def startListening(self) -> None:
        """Already listening: the route was added by ``RouteEndpoint.listen``."""

    def stopListening(self) -> Deferred[None]:
        """Remove the route; the multiplexer stops the factory if it was started."""
        self.mux.remove_route(self.route)
        return succeed(None)

    def getHost(self) -> IAddress:
        """The address of the multiplexer's first port, or 0.0.0.0:0 before it listens."""
        for port in self.mux.ports:
            return port.getHost()
        return UNBOUND
