"""Closed connections are freed by reference counting: the cycle collector finds ~nothing.

With the collector disabled, N real connections (curl; Python's ssl closing without
close_notify) go through portmux, plain proxied and TLS-terminated then proxied, both
with the client and with the backend closing first; then ``gc.collect()`` must find
fewer than one object per connection (a TLS connection used to leave ~45 in cycles).
With fast paths off (public Twisted API only) Twisted's endpoint dial and TLS close
leave their own cycles, so these tests skip there.
"""

from __future__ import annotations

import gc
import socket
import ssl
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from portmux import _twisted
from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.proxy import ProxyTarget
from portmux.targets.tls import TLSTarget
from portmux.tls import CertificateStore
from tests.targets.test_tls_support import TIMEOUT, in_thread, make_pki, need, reactor, run

CONNECTIONS = 12
BODY = b"garbage-free\n"


class KeepOpen(Protocol):
    """An HTTP/1.1 backend that answers each request and leaves closing to the client."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
            )


class AnswerAndClose(Protocol):
    """An HTTP/1.0 backend that answers and closes first."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.0 200 OK\r\n\r\n" + BODY)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]


def curl_many(port: int, ca_file: Path | None) -> list[bytes]:
    """Blocking: ``CONNECTIONS`` separate curl runs, one connection each; their bodies.

    With ``ca_file``: https:// to a.example.com (resolved to loopback), else http://.
    """
    argv = ["curl", "-sS", "--max-time", str(TIMEOUT)]
    if ca_file is None:
        argv.append(f"http://127.0.0.1:{port}/")
    else:
        argv += ["--resolve", f"a.example.com:{port}:127.0.0.1", "--cacert", str(ca_file),
                 f"https://a.example.com:{port}/"]
    return [run(argv).stdout for _ in range(CONNECTIONS)]


def ssl_without_close_notify(port: int, ca_file: Path) -> list[bytes]:
    """Blocking: Python ssl clients that read the answer and close the socket abruptly."""
    context = ssl.create_default_context(cafile=str(ca_file))
    bodies = []
    for _ in range(CONNECTIONS):
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        conn = context.wrap_socket(raw, server_hostname="a.example.com")
        conn.sendall(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        data = b""
        while not data.endswith(BODY):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        bodies.append(data)
        raw.close()  # FIN without close_notify (the TLS layer never shut down)
        conn.close()
    return bodies


class ConnectionGarbageTests(TestCase):
    """Count what only the cycle collector would free after connections close."""

    def setUp(self) -> None:
        if need("curl"):
            self.skipTest(need("curl"))
        if not _twisted.FAST_PATHS:  # public API only: endpoints' Connector/Deferred cycles
            self.skipTest("Twisted's own dial and TLS close leave cycles (fast paths off)")
        gc.collect()
        self.addCleanup(gc.enable)
        self.pki = make_pki(Path(tempfile.mkdtemp()))

    def serve(self, backend_protocol: type[Protocol], tls: bool) -> tuple[int, Multiplexer, str]:
        """Listen with a proxy route (behind TLS termination if ``tls``); the port, mux, route."""
        backend = reactor.listenTCP(0, Factory.forProtocol(backend_protocol), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        proxy = ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend.getHost().port}"])
        if tls:
            front = TLSTarget(reactor, CertificateStore([self.pki.directory]),
                              [Route("app", Match(), proxy)])
            mux = Multiplexer(reactor, [Route("front", Match(protocol="tls"), front)])
        else:
            mux = Multiplexer(reactor, [Route("front", Match(protocol="http"), proxy)])
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, mux, "front"

    @inlineCallbacks
    def garbage_after(self, mux: Multiplexer, route: str, clients: Any) -> Any:
        """Run ``clients`` (a Deferred factory) with the collector off; the garbage it left."""
        gc.collect()
        gc.disable()
        bodies = yield clients()
        for _ in range(200):  # bounded: the last closes finish on the reactor
            counters = mux.stats.routes.get(route)
            if counters is not None and counters.active == 0 and counters.connections >= CONNECTIONS:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(mux.stats.routes[route].connections, CONNECTIONS)
        self.assertEqual(mux.stats.routes[route].active, 0)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            kinds = Counter(type(obj).__qualname__ for obj in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        return bodies, kinds

    def assert_little_garbage(self, kinds: Counter[str]) -> None:
        total = sum(kinds.values())
        self.assertLess(total, CONNECTIONS, f"{total} objects in cycles: {kinds.most_common(12)}")
        for name in ("SniffingProtocol", "_InnerSniffer", "TerminatingTLS", "Server", "frame"):
            self.assertNotIn(name, kinds)

    @inlineCallbacks
    def curl_leaves_little_garbage(self, backend: Any, tls: bool) -> Any:
        """CONNECTIONS curl fetches through a plain or TLS-terminating route, then the count."""
        port, mux, route = self.serve(backend, tls=tls)
        ca_file = self.pki.ca_file if tls else None
        bodies, kinds = yield self.garbage_after(
            mux, route, lambda: in_thread(curl_many, port, ca_file))
        self.assertEqual(bodies, [BODY] * CONNECTIONS)
        self.assert_little_garbage(kinds)

    def test_plain_proxied_client_closes_first(self) -> Any:
        return self.curl_leaves_little_garbage(KeepOpen, tls=False)

    def test_plain_proxied_backend_closes_first(self) -> Any:
        return self.curl_leaves_little_garbage(AnswerAndClose, tls=False)

    def test_tls_terminated_curl_client_closes_first(self) -> Any:
        return self.curl_leaves_little_garbage(KeepOpen, tls=True)

    def test_tls_terminated_backend_closes_first(self) -> Any:
        return self.curl_leaves_little_garbage(AnswerAndClose, tls=True)

    @inlineCallbacks
    def test_tls_terminated_client_closes_without_close_notify(self) -> Any:
        port, mux, route = self.serve(KeepOpen, tls=True)
        bodies, kinds = yield self.garbage_after(
            mux, route, lambda: in_thread(ssl_without_close_notify, port, self.pki.ca_file))
        self.assertEqual(len(bodies), CONNECTIONS)
        self.assertTrue(all(body.endswith(BODY) for body in bodies), bodies)
        self.assert_little_garbage(kinds)
