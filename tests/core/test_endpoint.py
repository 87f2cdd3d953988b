"""Multiplexer.endpoint: any Twisted server listens on "the HTTP part" of a shared port."""

from __future__ import annotations

import shutil
import socket
import subprocess
from typing import Any

from twisted.internet import reactor, task, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from portmux import Multiplexer
from portmux.core.endpoint import UNBOUND
from portmux.testing import feed_mux

SSH_HELLO = b"SSH-2.0-test_client\r\n"


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class CountingFactory(Factory):
    protocol = Echo
    started = stopped = 0

    def startFactory(self) -> None:
        self.started += 1

    def stopFactory(self) -> None:
        self.stopped += 1


class InMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mux = Multiplexer(MemoryReactorClock())
        self.mux.startFactory()

    def listen(self, factory: Any, **match: Any) -> Any:
        endpoint = self.mux.endpoint(**match)
        self.assertTrue(IStreamServerEndpoint.providedBy(endpoint))
        port = self.successResultOf(endpoint.listen(factory))
        self.assertTrue(IListeningPort.providedBy(port))
        return port

    def test_listen_adds_a_route_serving_the_factory(self) -> None:
        factory = CountingFactory()
        port = self.listen(factory, protocol="ssh")
        self.assertEqual([r.name for r in self.mux.router.routes], ["ssh"])
        self.assertEqual(factory.started, 1)
        fed = feed_mux(self.mux, SSH_HELLO + b"hi")
        self.assertEqual(fed.route, port.route)
        self.assertEqual(fed.written, SSH_HELLO + b"hi")

    def test_stop_listening_removes_the_route_and_stops_the_factory(self) -> None:
        factory = CountingFactory()
        port = self.listen(factory, protocol="ssh")
        self.successResultOf(port.stopListening())
        self.assertEqual(self.mux.router.routes, ())
        self.assertEqual(factory.stopped, 1)
        fed = feed_mux(self.mux, SSH_HELLO)
        self.assertIsNone(fed.route)
        self.assertTrue(fed.closed)

    def test_get_host_before_the_multiplexer_listens(self) -> None:
        port = self.listen(CountingFactory(), protocol="ssh")
        self.assertEqual(port.getHost(), UNBOUND)

    def test_named_endpoint(self) -> None:
        port = self.listen(CountingFactory(), name="shell", protocol="ssh")
        self.assertEqual(port.route.name, "shell")


def ssh_like_exchange(port: int) -> bytes:
    """Send an SSH banner and a line on one socket; read the echo back."""
    expected = SSH_HELLO + b"ping\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(expected)
        got = b""
        while len(got) < len(expected):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    return got


def curl(port: int) -> bytes:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True,
    ).stdout


class LoopbackTests(TestCase):
    """A real twisted.web Site and an SSH-like echo server behind one loopback port."""

    @inlineCallbacks
    def test_site_and_echo_share_one_port(self) -> Any:
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        mux = Multiplexer(reactor)
        listening = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(listening.stopListening)
        number = listening.getHost().port

        root = Resource()
        root.putChild(b"", Data(b"site through an endpoint\n", "text/plain"))
        web = yield mux.endpoint(protocol="http").listen(Site(root))
        shell = yield mux.endpoint(protocol="ssh").listen(Factory.forProtocol(Echo))
        self.assertEqual(web.getHost(), listening.getHost())

        body = yield threads.deferToThread(curl, number)
        self.assertEqual(body, b"site through an endpoint\n")
        echoed = yield threads.deferToThread(ssh_like_exchange, number)
        self.assertEqual(echoed, SSH_HELLO + b"ping\n")

        for _ in range(500):  # the server sides close a reactor turn after the clients
            if all(mux.stats.for_route(n).active == 0 for n in ("http", "ssh")):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield web.stopListening()
        yield shell.stopListening()
        self.assertEqual(mux.router.routes, ())
