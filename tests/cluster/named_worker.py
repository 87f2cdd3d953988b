"""Worker factories that say who they are (``PORTMUX_TEST_NAME``), for the cluster tests."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site


def _name() -> bytes:
    return os.environ.get("PORTMUX_TEST_NAME", "worker").encode()


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"served by " + _name() + b"\n"


def http() -> Site:
    """An HTTP site answering ``served by NAME`` on every path."""
    return Site(_Hello())


class _NameThenEcho(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"this is " + _name() + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def tcpmux() -> Factory:
    """A stream service that names itself, then echoes."""
    return Factory.forProtocol(_NameThenEcho)
