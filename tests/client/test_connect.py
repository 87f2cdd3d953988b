"""The connect-by-name client, its endpoint string plugin, and the stdio bridge."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from portmux.client._connect import (
    MAX_ANSWER,
    PortmuxClientEndpoint,
    ProtocolError,
    ServiceRefused,
    connect_service,
    list_services,
)
from portmux.client.cli import bridge, parse_address
from portmux.core.mux import Multiplexer
from portmux.protocols.tcpmux import MalformedName
from portmux.targets.factory import FactoryTarget
from portmux.targets.help import HelpTarget

PEER = IPv4Address("TCP", "127.64.2.1", 443)
reactor: Any = global_reactor


class FakeEndpoint:
    """Connects the factory's protocol to a StringTransport at once."""

    def __init__(self) -> None:
        self.transport = StringTransport(peerAddress=PEER)
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.protocol = factory.buildProtocol(PEER)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.read_closed = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        """Not used."""

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class ConnectServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.recorder = Recorder()
        self.result = connect_service(
            self.clock, self.endpoint, "Alice:Orders/2",  # type: ignore[arg-type]
            Factory.forProtocol(lambda: self.recorder), timeout=5,
        )

    def test_sends_the_name_line(self) -> None:
        self.assertEqual(self.endpoint.transport.value(), b"Alice:Orders/2\r\n")
        self.assertNoResult(self.result)

    def test_plus_hands_over_and_replays_what_followed(self) -> None:
        self.endpoint.protocol.dataReceived(b"+ok\r\nSSH-2.0-x\r\n")
        self.assertIs(self.successResultOf(self.result), self.recorder)
        self.assertEqual(self.recorder.data, b"SSH-2.0-x\r\n")
        self.assertIs(self.recorder.transport, self.endpoint.transport)
        self.endpoint.protocol.dataReceived(b"more")
        self.assertEqual(self.recorder.data, b"SSH-2.0-x\r\nmore")
        self.endpoint.protocol.readConnectionLost()
        self.assertTrue(self.recorder.read_closed)
        self.endpoint.protocol.connectionLost(Failure(ConnectionError()))
        self.assertIsNotNone(self.recorder.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_split_byte_by_byte(self) -> None:
        for byte in b"+\r\n":
            self.endpoint.protocol.dataReceived(bytes([byte]))
        self.assertIs(self.successResultOf(self.result), self.recorder)

    def test_minus_fails_with_the_reason(self) -> None:
        self.endpoint.protocol.dataReceived(b"-unknown service 'orders'\r\n")
        error = self.failureResultOf(self.result, ServiceRefused).value
        self.assertEqual(error.reason, "unknown service 'orders'")
        self.assertEqual(error.service, "Alice:Orders/2")
        self.assertTrue(self.endpoint.transport.disconnecting)

    def test_garbage_answer(self) -> None:
        self.endpoint.protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n")
        self.failureResultOf(self.result, ProtocolError)

    def test_overlong_answer(self) -> None:
        self.endpoint.protocol.dataReceived(b"+" * (MAX_ANSWER + 1))
        self.failureResultOf(self.result, ProtocolError)

    def test_timeout(self) -> None:
        self.clock.advance(5)
        self.failureResultOf(self.result, TimeoutError)
        self.assertTrue(self.endpoint.transport.disconnecting)

    def test_closed_before_answer(self) -> None:
        self.endpoint.protocol.connectionLost(Failure(ConnectionError("gone")))
        error = self.failureResultOf(self.result, ConnectionClosed).value
        self.assertIn("before the server answered", str(error))


def test_malformed_name_fails_before_connecting() -> None:
    endpoint = FakeEndpoint()
    result = connect_service(MemoryReactorClock(), endpoint, "a:b:c", Factory())  # type: ignore[arg-type]
    failures: list[Failure] = []
    result.addErrback(failures.append)
    assert failures and failures[0].check(MalformedName)
    assert endpoint.protocol is None


def test_list_services_reads_until_close_and_reports_refusal() -> None:
    endpoint = FakeEndpoint()
    names: list[Any] = []
    list_services(MemoryReactorClock(), endpoint).addBoth(names.append)  # type: ignore[arg-type]
    assert endpoint.transport.value() == b"HELP\r\n"
    endpoint.protocol.dataReceived(b"alice:orders/2\r\nss")
    endpoint.protocol.dataReceived(b"h\r\n")
    endpoint.protocol.connectionLost(Failure(ConnectionError()))
    assert names == [["alice:orders/2", "ssh"]]

    endpoint = FakeEndpoint()
    results: list[Any] = []
    list_services(MemoryReactorClock(), endpoint).addBoth(results.append)  # type: ignore[arg-type]
    endpoint.protocol.dataReceived(b"-HELP is disabled\r\n")
    endpoint.protocol.connectionLost(Failure(ConnectionError()))
    assert isinstance(results[0], Failure) and results[0].value.reason == "HELP is disabled"


# -- the endpoint string plugin ---------------------------------------------------


def test_endpoint_string_plugin() -> None:
    endpoint = clientFromString(reactor, r"portmux:tcp\:example.com\:443:service=alice\:orders/2")
    assert isinstance(endpoint, PortmuxClientEndpoint)
    assert endpoint.service == "alice:orders/2"
    tls = clientFromString(reactor, r"portmux:tls\:example.com\:443:service=orders:timeout=3")
    assert isinstance(tls, PortmuxClientEndpoint)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        (r"portmux:tcp\:example.com\:443", "service=NAME parameter is required"),
        (r"portmux:tcp\:example.com\:443:service=x:colour=red", "unknown parameter"),
        ("portmux:tcp:example.com:443:service=x", "one nested endpoint"),
        (r"portmux:tcp\:example.com\:443:service=a\:b\:c", "more than one ':'"),
    ],
)
def test_endpoint_string_errors(description: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clientFromString(reactor, description)


def test_parse_address() -> None:
    assert parse_address("example.com:443") == ("example.com", 443)
    assert parse_address("[::1]:8443") == ("::1", 8443)
    for bad in ("example.com", ":443", "h:0", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


# -- real sockets: endpoint string and the stdio bridge against a Multiplexer ------


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()
        self.got: Deferred[bytes] | None = None
        self.want = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.got is not None and len(self.data) >= self.want:
            got, self.got = self.got, None
            got.callback(self.data)

    def wait_for(self, count: int) -> Deferred[bytes]:
        self.want = count
        self.got = Deferred()
        if len(self.data) >= count:
            got, self.got = self.got, None
            got.callback(self.data)
        return got if self.got is None else self.got

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.data)


class FakeStdio:
    """Stands in for StandardIO: records writes, lets the test feed stdin and EOF."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.written = b""
        self.lost = False
        self.producers: list[Any] = []
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        self.written += data

    def loseConnection(self) -> None:
        self.lost = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producers.append(producer)

    def pauseProducing(self) -> None:
        """Flow control hook."""

    def resumeProducing(self) -> None:
        """Flow control hook."""

    def stopProducing(self) -> None:
        """Flow control hook."""


class RealSocketTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def listen(self) -> Any:
        mux = Multiplexer(reactor)
        mux.add_route(FactoryTarget(Factory.forProtocol(Echo)), name="echo",
                      protocol="tcpmux", service="echo/1")
        mux.add_route(HelpTarget(), name="help", protocol="tcpmux", service="help")
        port = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_endpoint_string_reaches_the_service(self) -> Any:
        port = yield self.listen()
        endpoint = clientFromString(reactor, rf"portmux:tcp\:127.0.0.1\:{port}:service=ECHO")
        collect = Collect()
        protocol = yield endpoint.connect(Factory.forProtocol(lambda: collect))
        self.assertIs(protocol, collect)
        collect.transport.write(b"ping")  # type: ignore[union-attr]
        data = yield collect.wait_for(4)
        self.assertEqual(data, b"ping")
        collect.transport.loseConnection()  # type: ignore[union-attr]
        yield collect.closed

    @inlineCallbacks
    def test_refusal_over_the_network(self) -> Any:
        port = yield self.listen()
        endpoint = PortmuxClientEndpoint(
            reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", port), "echo/2"
        )
        error = yield self.assertFailure(
            endpoint.connect(Factory.forProtocol(Collect)), ServiceRefused
        )
        self.assertEqual(error.reason, "service 'echo' has no version 2 (registered: 1)")

    @inlineCallbacks
    def test_list_services_over_the_network(self) -> Any:
        port = yield self.listen()
        names = yield list_services(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        self.assertEqual(names, ["echo/1"])

    @inlineCallbacks
    def test_bridge_half_closes_on_stdin_eof_and_ends_on_service_eof(self) -> Any:
        port = yield self.listen()
        stdios: list[FakeStdio] = []

        def make_stdio(protocol: Protocol) -> FakeStdio:
            stdios.append(FakeStdio(protocol))
            return stdios[-1]

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        done = bridge(reactor, endpoint, "echo", make_stdio, timeout=10)
        while not stdios:
            yield _turn()
        stdio = stdios[0]
        self.assertEqual(len(stdio.producers), 1)
        stdio.protocol.dataReceived(b"hello")
        while stdio.written != b"hello":
            yield _turn()
        # stdin EOF: the echo service's read side closes; the FactoryTarget's Echo is not
        # half-closeable, so the mux closes the connection, which ends the bridge.
        IHalfCloseableProtocol(stdio.protocol).readConnectionLost()
        yield done
        self.assertTrue(stdio.lost)


def _turn() -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.01, lambda: None)


class TlsTests(TestCase):
    """--tls: the name line travels inside TLS to a listener with a certificate."""

    timeout = 30

    @inlineCallbacks
    def test_services_and_endpoint_over_tls(self) -> Any:
        import os
        import sys
        import tempfile

        import trustme
        from twisted.internet.utils import getProcessOutputAndValue

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        folder = tempfile.mkdtemp(prefix="portmux-tls-")
        key_pem = os.path.join(folder, "server.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(key_pem)
        ca_pem = os.path.join(folder, "ca.pem")
        ca.cert_pem.write_to_path(ca_pem)
        os.mkdir(os.path.join(folder, "roots"))
        ca.cert_pem.write_to_path(os.path.join(folder, "roots", "ca.pem"))

        mux = Multiplexer(reactor)
        mux.add_route(FactoryTarget(Factory.forProtocol(Echo)), name="echo",
                      protocol="tcpmux", service="echo")
        mux.add_route(HelpTarget(), name="help", protocol="tcpmux", service="help")
        port = yield mux.listen(f"ssl:0:interface=127.0.0.1:privateKey={key_pem}")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        env = {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])}
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "portmux", "services", "--tls-ca", ca_pem, f"127.0.0.1:{number}"],
            env=env,
        )
        self.assertEqual((code, out), (0, b"echo\n"), err.decode("utf-8", "replace"))

        roots = os.path.join(folder, "roots")
        endpoint = clientFromString(
            reactor, rf"portmux:tls\:localhost\:{number}\:trustRoots\={roots}:service=echo"
        )
        collect = Collect()
        yield endpoint.connect(Factory.forProtocol(lambda: collect))
        collect.transport.write(b"secret")  # type: ignore[union-attr]
        self.assertEqual((yield collect.wait_for(6)), b"secret")
        collect.transport.loseConnection()  # type: ignore[union-attr]
        yield collect.closed
