# -*- test-case-name: tests.client.test_connect -*-
"""``portmux connect HOST:PORT SERVICE`` (stdin/stdout bridge) and ``portmux services``.

``ssh -o ProxyCommand='portmux connect %h:443 ssh' host`` reaches the SSH service
behind a shared port: stdin goes to the service, the service's bytes to stdout;
stdin EOF half-closes towards the service, and the service's EOF ends the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux.client._connect import (
    DEFAULT_TIMEOUT,
    ServiceRefused,
    connect_service,
    list_services,
)

__all__ = [
    "add_connect_arguments",
    "add_services_arguments",
    "bridge",
    "make_endpoint",
    "parse_address",
    "run_connect",
    "run_services",
]

FAILED = 1


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); raise ValueError with a usable message."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. example.com:443 or [::1]:443)")
    return host.strip("[]"), int(port)


def make_endpoint(
    reactor: Any, address: str, tls: bool = False, ca_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> IStreamClientEndpoint:
    """A client endpoint for ``HOST:PORT``, optionally TLS checked against ``ca_file``."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    host, port = parse_address(address)
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls or ca_file:
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        trust = None
        if ca_file:
            with open(ca_file, "rb") as pem:
                trust = Certificate.loadPEM(pem.read())
        endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), endpoint)
    return endpoint  # type: ignore[no-any-return]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="HOST:PORT", help="the shared portmux port")
    parser.add_argument("--tls", action="store_true", help="connect with TLS first")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA certificate to trust (implies --tls)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"connect and answer timeout (default {DEFAULT_TIMEOUT:g})",
    )


def add_connect_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``portmux connect``."""
    _add_common(parser)
    parser.add_argument("service", metavar="SERVICE", help="[namespace:]name[/version]")


def add_services_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``portmux services``."""
    _add_common(parser)


@implementer(IHalfCloseableProtocol)
class _ServiceSide(Protocol):
    """The network leg: its bytes go to stdout; its EOF ends the bridge."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done
        self.stdio: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.stdio is not None:
            self.stdio.write(data)

    def readConnectionLost(self) -> None:
        self._finish()

    def writeConnectionLost(self) -> None:
        """Our write side is closed (stdin ended); keep reading."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finish()

    def _finish(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()
        if self.stdio is not None:
            self.stdio.loseConnection()
        if not self.done.called:
            self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class _StdioSide(Protocol):
    """The stdin/stdout leg: stdin goes to the service; stdin EOF half-closes it."""

    def __init__(self, service: _ServiceSide) -> None:
        self.service = service

    def connectionMade(self) -> None:
        stdio: Any = self.transport
        network: Any = self.service.transport
        stdio.registerProducer(network, True)
        network.registerProducer(stdio, True)

    def dataReceived(self, data: bytes) -> None:
        network: Any = self.service.transport
        network.write(data)

    def readConnectionLost(self) -> None:
        network: Any = self.service.transport
        if network is not None and hasattr(network, "loseWriteConnection"):
            network.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        self.service._finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.service._finish()


def bridge(
    reactor: Any,
    endpoint: IStreamClientEndpoint,
    service: str,
    stdio: Callable[[Protocol], object],
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[None]:
    """Connect to ``service`` and bridge it to ``stdio(protocol)``; fires when it ends."""
    done: Deferred[None] = Deferred()
    side = _ServiceSide(done)

    def connected(_: object) -> Deferred[None]:
        side.stdio = stdio(_StdioSide(side))
        return done

    factory: Any = Factory.forProtocol(lambda: side)
    answered = connect_service(reactor, endpoint, service, factory, timeout)
    return answered.addCallback(connected)


def _report(command: str, failure: Failure) -> int:
    error = failure.value
    if isinstance(error, ServiceRefused):
        print(f"portmux {command}: {error}", file=sys.stderr)
    else:
        print(f"portmux {command}: {failure.getErrorMessage() or type(error).__name__}",
              file=sys.stderr)
    return FAILED


def _run(command: str, start: Callable[[Any], Deferred[int]]) -> int:
    """Run the global reactor until ``start(reactor)`` fires; return its exit status."""
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    status = [FAILED]

    def go() -> None:
        result = start(reactor)

        def record(value: int) -> None:
            status[0] = value

        def stop(_: object) -> None:
            reactor.stop()

        result.addErrback(lambda f: _report(command, f)).addCallback(record).addBoth(stop)

    reactor.callWhenRunning(go)
    reactor.run()
    return status[0]


def run_connect(args: argparse.Namespace) -> int:
    """Bridge stdin/stdout to SERVICE at HOST:PORT; 0 when the service closes, else 1."""
    try:
        from portmux.protocols import tcpmux as naming

        if args.service.strip().lower() != "help":
            naming.parse(args.service)
        parse_address(args.address)
    except ValueError as error:
        print(f"portmux connect: {error}", file=sys.stderr)
        return FAILED

    def start(reactor: Any) -> Deferred[int]:
        from twisted.internet import stdio

        standard_io: Any = stdio.StandardIO

        endpoint = make_endpoint(reactor, args.address, args.tls, args.tls_ca, args.timeout)
        d = bridge(reactor, endpoint, args.service, lambda p: standard_io(p, reactor=reactor),
                   args.timeout)
        return d.addCallback(lambda _: 0)

    return _run("connect", start)


def run_services(args: argparse.Namespace) -> int:
    """Print the HELP listing of HOST:PORT, one name per line."""
    try:
        parse_address(args.address)
    except ValueError as error:
        print(f"portmux services: {error}", file=sys.stderr)
        return FAILED

    def start(reactor: Any) -> Deferred[int]:
        endpoint = make_endpoint(reactor, args.address, args.tls, args.tls_ca, args.timeout)

        def show(names: list[str]) -> int:
            for name in names:
                print(name)
            return 0

        return list_services(reactor, endpoint, args.timeout).addCallback(show)

    return _run("services", start)
