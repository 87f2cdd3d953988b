# -*- test-case-name: tests.core.test_proxied,tests.daemon.test_haproxy -*-
"""The PROXY header's addresses as the connection's own, for everything after the header.

Behind a trusted load balancer the socket's peer is the balancer. Every consumer of a
connection (twisted.web's ``Request.getClientAddress``/``getHost``, a factory's
protocol, TLS termination, the proxy target's own PROXY header, access logs) asks the
transport, so the transport is made to answer with the header's addresses.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress


class _Answer:
    """A zero-argument callable returning one address (stands in for getPeer/getHost)."""

    __slots__ = ("address",)

    def __init__(self, address: IAddress) -> None:
        self.address = address

    def __call__(self) -> IAddress:
        return self.address


def present_addresses(
    transport: Any, source: IAddress | None, destination: IAddress | None
) -> bool:
    """Make ``transport.getPeer()``/``getHost()`` return ``source``/``destination``.

    An instance attribute shadows the class's method, so the transport keeps its type
    (and the proxy target its socket fast paths). None leaves that side unchanged
    (PROXY ``LOCAL``/``UNKNOWN``). False when the transport refuses new attributes.
    """
    try:
        if source is not None:
            transport.getPeer = _Answer(source)
        if destination is not None:
            transport.getHost = _Answer(destination)
    except AttributeError:
        return False
    return True
