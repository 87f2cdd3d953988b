# -*- test-case-name: tests.client.test_connect -*-
"""The client side: connect to a service by name through a portmux port.

``connect_service`` and ``PortmuxClientEndpoint`` speak TCPMUX with Moniker-style
names; the ``portmux:`` endpoint string plugin and ``portmux connect`` (an ssh
ProxyCommand) are built on them.
"""

from portmux.client._connect import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER,
    PortmuxClientEndpoint,
    ServiceRefused,
    connect_service,
    list_services,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER",
    "PortmuxClientEndpoint",
    "ServiceRefused",
    "connect_service",
    "list_services",
]
