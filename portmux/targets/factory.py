# -*- test-case-name: tests.client.test_connect,tests.core.test_mux,tests.daemon.test_config,tests.targets.test_tls -*-
"""Serve a classified connection in-process with any IProtocolFactory."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol, IProtocolFactory
from zope.interface import implementer

from portmux.core import refusal
from portmux.core.interfaces import ITarget


@implementer(ITarget)
class FactoryTarget:
    """Builds a protocol from ``factory``, connects it, and replays the buffered bytes."""

    kind = "factory"

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory
        self.description = f"factory {type(factory).__module__}.{type(factory).__qualname__}"

    def start(self) -> None:
        self.factory.doStart()

    def stop(self) -> None:
        self.factory.doStop()

    def attach(self, connection: Any) -> IProtocol | None:
        protocol = self.factory.buildProtocol(connection.peer)
        if protocol is None:
            connection.refuse(refusal.UNAVAILABLE, "service declined the connection")
            return None
        connection.accept()
        protocol.makeConnection(connection.transport)
        payload = connection.payload
        if payload:
            protocol.dataReceived(payload)
        return protocol
