# -*- test-case-name: tests.client.test_connect -*-
"""Connect to a service by name (RFC 1078 TCPMUX with Moniker names) over any endpoint.

``connect_service`` sends ``NAME\\r\\n``, reads the one-line answer, and on ``+``
hands the connection to your factory's protocol; on ``-`` it fails with
ServiceRefused carrying the server's reason.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux.protocols import tcpmux as naming

__all__ = [
    "MAX_ANSWER",
    "PortmuxClientEndpoint",
    "ServiceRefused",
    "connect_service",
    "list_services",
]

MAX_ANSWER = 1024
"""Longest answer line (``+...`` or ``-...``) accepted from the server."""

MAX_LISTING = 1 << 20
"""Most bytes of a HELP listing read before giving up on the rest."""

DEFAULT_TIMEOUT = 30.0


class ServiceRefused(Exception):
    """The server answered ``-reason``: no such service, or it is unavailable."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"service {service!r} refused: {reason}")
        self.service = service
        self.reason = reason


class ProtocolError(Exception):
    """The server's answer was not a TCPMUX ``+``/``-`` line."""


def _check_name(service: str) -> str:
    """Validate ``service`` locally (HELP included) so a typo fails before connecting."""
    if service.strip().lower() != "help":
        naming.parse(service)
    return service.strip()


class _Base(Protocol):
    """A protocol whose transport is typed loosely (Twisted's interfaces confuse mypy)."""

    @property
    def _transport(self) -> Any:
        return self.transport


@implementer(IHalfCloseableProtocol)
class _Negotiator(_Base):
    """Sends the service line, reads the answer, then forwards events to the real protocol."""

    def __init__(
        self, reactor: Any, service: str, factory: IProtocolFactory, timeout: float
    ) -> None:
        self.reactor = reactor
        self.service = service
        self._wrapped_factory: Any = factory
        self.timeout = timeout
        self.answered: Deferred[IProtocol] = Deferred()
        self._buffer = b""
        self._inner: Any = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._transport.write(self.service.encode("ascii") + b"\r\n")
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError(f"no answer for service {self.service!r}"))
        self._transport.abortConnection()

    def _fail(self, error: Exception) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.answered.called:
            self.answered.errback(error)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_ANSWER:
                self._fail(ProtocolError("the server's answer line is too long"))
                self._transport.loseConnection()
            return
        line, rest = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
        self._buffer = b""
        text = line.decode("utf-8", "replace")
        if text.startswith("+"):
            self._accepted(rest)
        elif text.startswith("-"):
            self._fail(ServiceRefused(self.service, text[1:].strip()))
            self._transport.loseConnection()
        else:
            self._fail(ProtocolError(f"unexpected answer {text[:80]!r}; is this a portmux port?"))
            self._transport.loseConnection()

    def _accepted(self, rest: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        transport = self._transport
        inner: Any = self._wrapped_factory.buildProtocol(transport.getPeer())
        if inner is None:
            self._fail(ConnectionClosed("the factory declined the connection"))
            transport.loseConnection()
            return
        self._inner = inner
        inner.makeConnection(transport)
        self.answered.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def readConnectionLost(self) -> None:
        half: Any = IHalfCloseableProtocol(self._inner, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self._transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half: Any = IHalfCloseableProtocol(self._inner, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        why = reason.getErrorMessage()
        self._fail(ConnectionClosed(f"connection closed before the server answered: {why}"))


def connect_service(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    service: str,
    factory: IProtocolFactory,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[IProtocol]:
    """Connect through ``endpoint`` to ``service``; fire with factory's connected protocol.

    Fails with ServiceRefused (the ``-`` reason), TimeoutError, or
    naming.MalformedName for a name the server could never accept.
    """
    try:
        name = _check_name(service)
    except naming.MalformedName as error:
        return fail(error)
    negotiator = _Negotiator(reactor, name, factory, timeout)
    via: Any = endpoint
    connected: Deferred[object] = via.connect(Factory.forProtocol(lambda: negotiator))

    def _then(_: object) -> Deferred[IProtocol]:
        return negotiator.answered

    return connected.addCallback(_then)


class _HelpReader(_Base):
    """Sends ``HELP`` and collects the listing until the server closes (RFC 1078: no '+')."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.done: Deferred[list[str]] = Deferred()
        self._data = b""
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._transport.write(b"HELP\r\n")
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if not self.done.called:
            self.done.errback(TimeoutError("no complete HELP listing"))
        self._transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > MAX_LISTING:
            self._transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.done.called:
            return
        text = self._data[:MAX_LISTING].decode("utf-8", "replace")
        if text.startswith("-"):
            first = text[1:].splitlines()[0] if text[1:] else ""
            self.done.errback(ServiceRefused("HELP", first.strip()))
            return
        self.done.callback([line.strip() for line in text.splitlines() if line.strip()])


def list_services(
    reactor: Any, endpoint: IStreamClientEndpoint, timeout: float = DEFAULT_TIMEOUT
) -> Deferred[list[str]]:
    """Ask the server for ``HELP``: the service names it routes, one per line."""
    reader = _HelpReader(reactor, timeout)
    via: Any = endpoint
    connected: Deferred[object] = via.connect(Factory.forProtocol(lambda: reader))

    def _then(_: object) -> Deferred[list[str]]:
        return reader.done

    return connected.addCallback(_then)


@implementer(IStreamClientEndpoint)
class PortmuxClientEndpoint:
    """A client endpoint reaching ``service`` by name through another endpoint."""

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        service: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self.service = _check_name(service)
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return connect_service(
            self._reactor, self._endpoint, self.service, protocolFactory, self._timeout
        )
