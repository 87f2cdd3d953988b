# -*- test-case-name: tests.control.test_server,tests.daemon.test_config,tests.worker.test_integration,tests.worker.test_library -*-
"""A tiny in-process echo service (RFC 862 over TCP), for the default config and tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol


class Echo(Protocol):
    """Writes back every byte it receives."""

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)


class EchoFactory(Factory):
    """Builds Echo protocols; quiet about starting and stopping."""

    protocol = Echo
    noisy = False
