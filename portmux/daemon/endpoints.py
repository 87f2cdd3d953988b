# -*- test-case-name: tests.daemon.test_daemon -*-
"""Server endpoint strings checked up front, with one clear line when they are wrong."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from portmux.daemon.systemd import InheritedSockets, inherited_sockets, systemd_endpoint

_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``backlog=N`` added for endpoint types that take one (unless given)."""
    kind = description.split(":", 1)[0]
    if kind not in _BACKLOG_TYPES or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


class EndpointStringError(ValueError):
    """A server endpoint string that cannot be used, with the reason in words."""


def parse_server_endpoint(reactor: Any, description: str,
                          sockets: InheritedSockets | None = None) -> IStreamServerEndpoint:
    """``serverFromString`` that raises EndpointStringError with a readable reason.

    ``systemd:`` strings are read by portmux itself (see portmux.daemon.systemd).
    """
    try:
        if description.startswith("systemd:"):
            found = inherited_sockets() if sockets is None else sockets
            return systemd_endpoint(reactor, description, found)
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
        return endpoint
    except KeyError as error:
        raise EndpointStringError(str(error.args[0]) if error.args else "not found") from None
    except (ValueError, TypeError, IndexError) as error:
        raise EndpointStringError(str(error) or type(error).__name__) from None
