"""Client endpoint strings ``portmux:<endpoint>:service=NAME`` (import-light for discovery).

Example: ``clientFromString(reactor, "portmux:tcp\\:example.com\\:443:service=orders")``;
the nested endpoint may be any client endpoint string, ``tls:`` too, with its ``:``
and ``=`` escaped (``portmux:tls\\:h\\:443\\:trustRoots\\=/etc/ca:service=x``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class PortmuxClientParser:
    """Parses ``portmux:<nested endpoint>:service=NAME[:timeout=SECONDS]``."""

    prefix = "portmux"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> Any:
        from twisted.internet import endpoints

        from portmux.client._connect import DEFAULT_TIMEOUT, PortmuxClientEndpoint

        if len(args) != 1:
            raise ValueError(
                "portmux: give one nested endpoint with its ':' and '=' escaped, "
                "e.g. portmux:tcp\\:example.com\\:443:service=orders"
            )
        service = kwargs.pop("service", None) or kwargs.pop("name", None)
        if not service:
            raise ValueError("portmux: the service=NAME parameter is required")
        timeout = float(kwargs.pop("timeout", DEFAULT_TIMEOUT))
        if kwargs:
            raise ValueError(f"portmux: unknown parameter(s) {', '.join(sorted(kwargs))}")
        nested = endpoints.clientFromString(reactor, args[0])
        return PortmuxClientEndpoint(reactor, nested, service, timeout)


portmux_client_endpoint = PortmuxClientParser()
