# -*- test-case-name: tests.client.test_connect,tests.client.test_ssh,tests.core.test_mux,tests.daemon.test_config -*-
"""TCPMUX ``HELP``: list the service names routed on this port, one per line."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol
from zope.interface import implementer

from portmux.core.interfaces import ITarget
from portmux.protocols.tcpmux import parse_pattern


def service_names(router: Any) -> list[str]:
    """Every TCPMUX service name the router's routes answer (static and registered),
    sorted, without 'help' and ``namespace:*`` patterns."""
    parsed = (
        parse_pattern(route.match.service)
        for route in router.routes
        if route.match.service and route.match.protocol in (None, "tcpmux")
    )
    names = {str(name) for name in parsed if not name.is_pattern}  # canonical: "alice:orders/2"
    names.discard("help")
    return sorted(names)


@implementer(ITarget)
class HelpTarget:
    """Answers RFC 1078 HELP: the names, CRLF-terminated, then close."""

    kind = "help"
    description = "TCPMUX HELP listing"

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def attach(self, connection: Any) -> IProtocol | None:
        lines = "".join(f"{name}\r\n" for name in service_names(connection.mux.router))
        connection.transport.write(lines.encode("utf-8"))
        connection.transport.loseConnection()
        return None
