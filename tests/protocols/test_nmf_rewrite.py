"""Rewriting a net.tcp preamble's Via (``rewrite_via``): the function, and through a proxy."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmux import _twisted
from portmux.core.mux import Multiplexer
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route
from portmux.protocols import nmf
from portmux.targets.proxy import ProxyTarget
from tests.targets.test_tls_support import in_thread, reactor, wait_closed

from .helpers import fixture
from .test_nmf import known_encoding, mode, version, via

BUFFERED = fixture("nmf/mono-buffered.bin")


def rebuilt(uri: bytes) -> bytes:
    return version() + mode(0x02) + via(uri) + known_encoding(0x08) + b"\x0c"


class RewriteViaFunctionTests(SynchronousTestCase):
    """``nmf.rewrite_via``: scheme and authority replaced, path kept, size re-encoded."""

    def test_mono_preamble(self) -> None:
        out = nmf.rewrite_via(BUFFERED, "net.tcp://127.129.2.3:8808")
        self.assertEqual(out, rebuilt(b"net.tcp://127.129.2.3:8808/orders/Service.svc"))
        result = nmf.probe_nmf(out)
        assert isinstance(result, Preamble)
        self.assertEqual(result.via, "net.tcp://127.129.2.3:8808/orders/Service.svc")

    def test_size_grows_to_two_octets_and_back(self) -> None:
        host = "h" * 150
        longer = nmf.rewrite_via(BUFFERED, f"net.tcp://{host}:1")
        self.assertEqual(longer[6:8], nmf.encode_size(len(f"net.tcp://{host}:1/orders/Service.svc")))
        self.assertEqual(len(nmf.encode_size(len(f"net.tcp://{host}:1/orders/Service.svc"))), 2)
        self.assertEqual(nmf.rewrite_via(longer, "net.tcp://a:2"), rebuilt(b"net.tcp://a:2/orders/Service.svc"))

    def test_bytes_after_the_via_are_kept(self) -> None:
        data = BUFFERED + b"\x06message bytes"
        self.assertTrue(nmf.rewrite_via(data, "net.tcp://a:2").endswith(b"\x03\x08\x0c\x06message bytes"))

    def test_query_kept_ipv6_bracketed(self) -> None:
        data = rebuilt(b"net.tcp://portmux.example/svc?x=1")
        class Peer:
            host, port = "::1", 9

        address = nmf.address_of(Peer())
        self.assertEqual(address, "net.tcp://[::1]:9")
        self.assertEqual(nmf.rewrite_via(data, address), rebuilt(b"net.tcp://[::1]:9/svc?x=1"))

    def test_anything_else_is_unchanged(self) -> None:
        for data in (b"GET / HTTP/1.1\r\n\r\n", BUFFERED[:20], rebuilt(b"")[:-3], b"\x00\x02\x00" + BUFFERED[3:]):
            self.assertIs(nmf.rewrite_via(data, "net.tcp://a:1"), data)
        self.assertIs(nmf.rewrite_via(BUFFERED, None), BUFFERED)
        self.assertIsNone(nmf.address_of(object()))


class Keep(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data  # type: ignore[attr-defined]
        if self.factory.received.endswith(b"\x0c"):  # type: ignore[attr-defined]
            self.transport.write(b"\x0b")  # type: ignore[union-attr]  # PreambleAck


def exchange(port: int, data: bytes) -> bytes:
    """Blocking: send a preamble, read the one-byte answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(data)
        return client.recv(1)


class RewriteThroughProxyTests(TestCase):
    """A proxy target with rewrite_via sends the backend the rewritten preamble."""

    @defer.inlineCallbacks
    def check(self, rewrite: bool | str) -> Any:
        backend = Factory.forProtocol(Keep)
        backend.received = b""  # type: ignore[attr-defined]
        listening = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        backend_port = listening.getHost().port
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend_port}"], rewrite_via=rewrite)
        mux = Multiplexer(reactor, [Route("wcf", Match(via="net.tcp://+/orders/"), target)])
        port = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        answer = yield in_thread(exchange, port.getHost().port, BUFFERED)
        yield wait_closed(mux, "wcf")
        self.assertEqual(answer, b"\x0b")
        return backend.received, backend_port  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_backend_address(self) -> Any:
        received, backend_port = yield self.check(True)
        self.assertEqual(received, rebuilt(f"net.tcp://127.0.0.1:{backend_port}/orders/Service.svc".encode()))

    @defer.inlineCallbacks
    def test_configured_address(self) -> Any:
        received, _ = yield self.check("net.tcp://orders.internal:8808")
        self.assertEqual(received, rebuilt(b"net.tcp://orders.internal:8808/orders/Service.svc"))

    @defer.inlineCallbacks
    def test_off_by_default(self) -> Any:
        received, _ = yield self.check(False)
        self.assertEqual(received, BUFFERED)


class RewriteThroughPublicAPITests(RewriteThroughProxyTests):
    """The same with the fast paths off (backends dialled through endpoints)."""

    def setUp(self) -> None:
        self.patch(_twisted, "FAST_PATHS", False)
