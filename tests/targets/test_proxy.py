"""The proxy target over real loopback sockets: bytes, headers, balancing, closing."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from portmux import _twisted
from portmux.core.mux import Multiplexer
from portmux.targets.proxy import ProxyTarget

REQUEST = b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n"


@implementer(IHalfCloseableProtocol)
class Backend(Protocol):
    """A scriptable backend: records bytes, optionally echoes, reacts to EOF."""

    def connectionMade(self) -> None:
        self.received: list[bytes] = []
        self.eof = False
        self.factory.connections.append(self)
        self.factory.on_connect(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.factory.echo:
            self.transport.write(data)
        self.factory.on_data(self)

    def readConnectionLost(self) -> None:
        self.eof = True
        self.factory.on_eof(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost.append(self)

    def data(self) -> bytes:
        return b"".join(self.received)


class BackendFactory(Factory):
    protocol = Backend

    def __init__(
        self,
        echo: bool = False,
        on_connect: Callable[[Backend], None] = lambda b: None,
        on_data: Callable[[Backend], None] = lambda b: None,
        on_eof: Callable[[Backend], None] = lambda b: b.transport.loseConnection(),
    ) -> None:
        self.echo = echo
        self.on_connect = on_connect
        self.on_data = on_data
        self.on_eof = on_eof
        self.connections: list[Backend] = []
        self.lost: list[Backend] = []


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def exchange(port: int, send: bytes, shut: bool = True, timeout: float = 10.0) -> bytes:
    """Blocking client: connect, send, optionally SHUT_WR, read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(send)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


class Hanging:
    """A backend endpoint whose connect never completes; counts cancellations."""

    def __init__(self) -> None:
        self.cancelled = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        return defer.Deferred(cancel)


class ConstructorTests(SynchronousTestCase):
    """ProxyTarget(endpoints) or ProxyTarget(reactor, endpoints)."""

    def test_forms(self) -> None:
        for target in (ProxyTarget(["tcp:127.0.0.1:1"]), ProxyTarget("tcp:127.0.0.1:1"),
                       ProxyTarget(endpoints=["tcp:127.0.0.1:1"])):
            self.assertIsNone(target.reactor)
            self.assertEqual(target.description, "proxy to tcp:127.0.0.1:1")
        named = ProxyTarget(reactor, ["tcp:127.0.0.1:1"])
        self.assertIs(named.reactor, reactor)
        self.assertEqual(len(named.backends), 1)

    def test_bad_strings_fail_at_construction(self) -> None:
        self.assertRaises(ValueError, ProxyTarget, ["tcp:no-port"])
        self.assertRaises(ValueError, ProxyTarget, [])


class ProxyTests(TestCase):
    """Integration tests: client socket → Multiplexer → ProxyTarget → backend."""

    timeout = 30

    def listen_backend(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    def listen_mux(self, target: ProxyTarget, **match: Any) -> tuple[int, Multiplexer]:
        mux = Multiplexer(reactor)
        mux.add_route(target, name="proxied", **(match or {"default": True}))
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, mux

    def settle(self, seconds: float = 0.05) -> defer.Deferred[None]:
        return task.deferLater(reactor, seconds, lambda: None)

    async def wait_for(self, condition: Callable[[], bool], limit: float = 10.0) -> None:
        waited = 0.0
        while not condition():
            if waited > limit:
                self.fail("condition not reached")
            await self.settle(0.02)
            waited += 0.02

    # -- bytes ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_bytes_unchanged_with_preamble(self) -> Any:
        """The sniffed request and a large body reach the backend and come back unchanged."""
        backend = BackendFactory(echo=True)
        port, _ = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        body = REQUEST + os.urandom(3_000_000)
        echoed = yield threads.deferToThread(exchange, port, body)
        self.assertEqual(echoed, body)
        self.assertEqual(backend.connections[0].data(), body)

    @defer.inlineCallbacks
    def test_endpoint_strings_without_a_reactor(self) -> Any:
        """ProxyTarget("tcp:...") dials with the reactor of the multiplexer it serves."""
        backend = BackendFactory(echo=True)
        target = ProxyTarget(f"tcp:127.0.0.1:{self.listen_backend(backend)}")
        self.assertIsNone(target.reactor)
        port, _ = self.listen_mux(target)
        echoed = yield threads.deferToThread(exchange, port, REQUEST + b"no reactor")
        self.assertEqual(echoed, REQUEST + b"no reactor")
        self.assertIs(target.reactor, reactor)

    @defer.inlineCallbacks
    def test_unix_backend(self) -> Any:
        """unix: backends go through the reactor's UNIX connector."""
        backend = BackendFactory(echo=True)
        path = os.path.join(tempfile.mkdtemp(), "b.sock")
        listening = reactor.listenUNIX(path, backend)
        self.addCleanup(listening.stopListening)
        port, _ = self.listen_mux(ProxyTarget(reactor, [f"unix:{path}"]))
        echoed = yield threads.deferToThread(exchange, port, REQUEST + b"payload")
        self.assertEqual(echoed, REQUEST + b"payload")

    @defer.inlineCallbacks
    def test_generic_endpoint_object(self) -> Any:
        """Endpoint objects (not strings) use endpoint.connect and still proxy."""
        from twisted.internet.endpoints import HostnameEndpoint

        backend = BackendFactory(echo=True)
        endpoint = HostnameEndpoint(reactor, "127.0.0.1", self.listen_backend(backend))
        port, _ = self.listen_mux(ProxyTarget(reactor, [endpoint]))
        echoed = yield threads.deferToThread(exchange, port, REQUEST + b"abc")
        self.assertEqual(echoed, REQUEST + b"abc")

    @defer.inlineCallbacks
    def test_nagle_disabled_both_legs(self) -> Any:
        """Both of portmux's sockets of a proxied TCP connection have TCP_NODELAY set."""
        held: list[Backend] = []
        backend = BackendFactory(on_connect=held.append, on_eof=lambda b: None)
        port, mux = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        s = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(s.close)
        s.sendall(REQUEST)
        yield self.wait_for(lambda: bool(held) and bool(held[0].received))
        from twisted.internet.tcp import Connection

        ports = (s.getsockname()[1], held[0].transport.getHost().port)
        mine = [
            t.socket for t in _transports()
            if isinstance(t, Connection)
            and t.getPeer().port in ports
            and getattr(t, "socket", None) is not None
        ] + [  # a pair the relay copies has no transports in the reactor: its sockets
            side.skt for relay in _relays() for side in relay.sides.values()
            if side.skt.getpeername()[1] in ports
        ]
        self.assertEqual(len(mine), 2)
        for skt in mine:
            self.assertEqual(skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        s.close()
        held[0].transport.loseConnection()
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)

    # -- PROXY headers -----------------------------------------------------------

    @defer.inlineCallbacks
    def check_header(self, version: str, parser: Any) -> Any:
        backend = BackendFactory()
        port, _ = self.listen_mux(
            ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"], proxy_header=version)
        )

        def client() -> int:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(REQUEST)
                s.shutdown(socket.SHUT_WR)
                s.recv(100)
                return s.getsockname()[1]  # type: ignore[no-any-return]

        client_port = yield threads.deferToThread(client)
        info, rest = parser().feed(backend.connections[0].data())
        self.assertEqual(rest, REQUEST)
        self.assertEqual(info.source, IPv4Address("TCP", "127.0.0.1", client_port))
        self.assertEqual(info.destination, IPv4Address("TCP", "127.0.0.1", port))

    def test_proxy_header_v1(self) -> Any:
        """A PROXY v1 line with the real client address precedes the payload."""
        return self.check_header("v1", V1Parser)

    def test_proxy_header_v2(self) -> Any:
        """A PROXY v2 header with the real client address precedes the payload."""
        return self.check_header("v2", V2Parser)

    # -- balancing and failure ------------------------------------------------------

    @defer.inlineCallbacks
    def test_round_robin(self) -> Any:
        """Connections alternate over the backends."""
        seen: list[str] = []
        ports = []
        for name in ("a", "b", "c"):
            f = BackendFactory(on_connect=lambda b, name=name: seen.append(name))
            ports.append(self.listen_backend(f))
        port, _ = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{p}" for p in ports]))
        for _ in range(6):
            yield threads.deferToThread(exchange, port, REQUEST)
        self.assertEqual(seen, ["a", "b", "c", "a", "b", "c"])

    @defer.inlineCallbacks
    def test_failover(self) -> Any:
        """A refused first backend is skipped for the next one, on the same connection."""
        backend = BackendFactory(echo=True)
        target = ProxyTarget(
            reactor, [f"tcp:127.0.0.1:{free_port()}", f"tcp:127.0.0.1:{self.listen_backend(backend)}"]
        )
        port, _ = self.listen_mux(target)
        for _ in range(2):  # both starting points of the rotation
            echoed = yield threads.deferToThread(exchange, port, REQUEST)
            self.assertEqual(echoed, REQUEST)
        self.assertEqual(len(backend.connections), 2)

    @defer.inlineCallbacks
    def test_all_down_http_502(self) -> Any:
        """HTTP clients get a generic 502; the one log line names the backends tried."""
        dead = [f"tcp:127.0.0.1:{free_port()}", f"tcp:127.0.0.1:{free_port()}"]
        port, mux = self.listen_mux(ProxyTarget(reactor, dead), protocol="http")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        answer = yield threads.deferToThread(exchange, port, REQUEST, False)
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n502 Bad Gateway: backend unreachable\n"), answer)
        self.assertNotIn(b"127.0.0.1", answer)
        refused = [e for e in events if e.get("log_format", "").startswith("refused")]
        self.assertEqual(len(refused), 1)
        for name in dead:
            self.assertIn(name, refused[0]["reason"])
        self.assertEqual(mux.stats.refusals["backend_unreachable"], 1)

    @defer.inlineCallbacks
    def test_all_down_tcpmux(self) -> Any:
        """TCPMUX clients get a '-reason' line when the backend is unreachable."""
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{free_port()}"])
        port, _ = self.listen_mux(target, protocol="tcpmux", service="thing")
        answer = yield threads.deferToThread(exchange, port, b"thing\r\n", False)
        self.assertEqual(answer, b"-backend unreachable\r\n")

    @defer.inlineCallbacks
    def test_tcpmux_accept_then_bytes(self) -> Any:
        """TCPMUX clients get '+' first, then the backend's bytes; the name line is not forwarded."""
        backend = BackendFactory(echo=True)
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"])
        port, _ = self.listen_mux(target, protocol="tcpmux", service="thing")
        answer = yield threads.deferToThread(exchange, port, b"THING\r\nhello")
        self.assertEqual(answer, b"+\r\nhello")

    @defer.inlineCallbacks
    def test_connect_timeout_then_failover(self) -> Any:
        """A backend whose connect never completes is cancelled after connect_timeout."""
        hanging = Hanging()
        backend = BackendFactory(echo=True)
        target = ProxyTarget(
            reactor, [hanging, f"tcp:127.0.0.1:{self.listen_backend(backend)}"], connect_timeout=0.2  # type: ignore[list-item]
        )
        port, _ = self.listen_mux(target)
        echoed = yield threads.deferToThread(exchange, port, REQUEST)
        self.assertEqual(echoed, REQUEST)
        self.assertEqual(hanging.cancelled, 1)

    def full_listener(self) -> int:
        """A loopback port whose accept queue is full: new connects stay in progress."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.addCleanup(listener.close)
        port: int = listener.getsockname()[1]
        for _ in range(4):  # fill the queue; further SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self.addCleanup(filler.close)
        return port

    @defer.inlineCallbacks
    def test_socket_dial_timeout_then_failover(self) -> Any:
        """An in-progress connect to an IP literal times out and the next backend is used."""
        backend = BackendFactory(echo=True)
        target = ProxyTarget(
            reactor,
            [f"tcp:127.0.0.1:{self.full_listener()}", f"tcp:127.0.0.1:{self.listen_backend(backend)}"],
            connect_timeout=0.3,
        )
        # the own-socket path with the fast paths on; endpoint.connect() without
        self.assertEqual(target.backends[0].address is not None, _twisted.FAST_PATHS)
        port, _ = self.listen_mux(target)
        echoed = yield threads.deferToThread(exchange, port, REQUEST)
        self.assertEqual(echoed, REQUEST)
        self.assertEqual(len(backend.connections), 1)

    @defer.inlineCallbacks
    def test_socket_dial_cancelled_when_client_resets(self) -> Any:
        """A client reset while our own connect is in progress stops watching that socket."""
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.full_listener()}"], connect_timeout=60)
        port, mux = self.listen_mux(target)

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(REQUEST)
                time.sleep(0.2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        yield threads.deferToThread(client)
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)
        dialing = [w for w in reactor.getWriters() if type(w).__name__ == "_Dialing"]
        self.assertEqual(dialing, [])
        self.assertEqual(mux.stats.refusals["backend_unreachable"], 0)

    @defer.inlineCallbacks
    def test_connect_timeout_all_down(self) -> Any:
        """Only hanging backends: a 502 after the timeout."""

        port, _ = self.listen_mux(ProxyTarget(reactor, [Hanging()], connect_timeout=0.1), protocol="http")  # type: ignore[list-item]
        answer = yield threads.deferToThread(exchange, port, REQUEST, False)
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)

    # -- half-close ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_client_half_close(self) -> Any:
        """Client FIN reaches the backend; the backend can still answer afterwards."""

        def on_eof(b: Backend) -> None:
            b.transport.write(b"got:" + b.data())
            b.transport.loseConnection()

        backend = BackendFactory(on_eof=on_eof)
        port, _ = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        answer = yield threads.deferToThread(exchange, port, REQUEST + b"tail")
        self.assertEqual(answer, b"got:" + REQUEST + b"tail")

    @defer.inlineCallbacks
    def test_backend_half_close(self) -> Any:
        """Backend FIN reaches the client; the client can still send afterwards."""

        def on_connect(b: Backend) -> None:
            b.transport.write(b"banner")
            b.transport.loseWriteConnection()

        def on_eof(b: Backend) -> None:
            b.transport.loseConnection()

        backend = BackendFactory(on_connect=on_connect, on_eof=on_eof)
        port, _ = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(REQUEST)
                got = b""
                while True:
                    chunk = s.recv(100)
                    if not chunk:
                        break  # backend's FIN arrived
                    got += chunk
                s.sendall(b"after-fin")
                s.shutdown(socket.SHUT_WR)
                s.recv(10)
                return got

        got = yield threads.deferToThread(client)
        self.assertEqual(got, b"banner")
        yield self.wait_for(lambda: backend.connections[0].eof)
        self.assertEqual(backend.connections[0].data(), REQUEST + b"after-fin")

    @defer.inlineCallbacks
    def test_backend_answers_and_closes_at_once(self) -> Any:
        """A backend that answers and closes (HTTP/1.0 style): answer, then EOF, then all closed.

        The answer and the FIN usually arrive together; both must reach the
        client in order, and every socket of the connection must be closed after.
        """

        def on_data(b: Backend) -> None:
            b.transport.write(b"HTTP/1.0 200 OK\r\n\r\nbody")
            b.transport.loseConnection()

        backend = BackendFactory(on_data=on_data, on_eof=lambda b: None)
        port, mux = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        before = len(_transports())  # the two listening ports
        for _ in range(20):
            answer = yield threads.deferToThread(exchange, port, REQUEST, False)
            self.assertEqual(answer, b"HTTP/1.0 200 OK\r\n\r\nbody")
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)
        yield self.wait_for(lambda: len(_transports()) == before)
        self.assertEqual(mux.stats.for_route("proxied").connections, 20)

    # -- backpressure and failures -------------------------------------------------------

    @defer.inlineCallbacks
    def test_backpressure_bounded(self) -> Any:
        """A backend that does not read pauses the client; portmux buffers a bounded amount."""
        backend = BackendFactory(on_connect=lambda b: b.transport.pauseProducing())
        port, mux = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        s = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(s.close)
        s.setblocking(False)
        s.send(REQUEST)
        chunk = b"x" * 65536
        total = len(REQUEST)
        limit = 50_000_000
        stalls = 0
        while total < limit and stalls < 40:
            try:
                sent = s.send(chunk)
                total += sent
                stalls = 0
            except BlockingIOError:
                stalls += 1
                yield self.settle(0.01)
        self.assertLess(total, limit, "the client was never paused")
        yield self.settle(0.1)
        proxied = backend.connections[0].transport.getPeer().port
        buffered = 0
        for t in _transports():
            buffered = max(buffered, len(getattr(t, "dataBuffer", b"")) + getattr(t, "_tempDataLen", 0))
        self.assertLess(buffered, 1_000_000)
        self.assertGreater(proxied, 0)
        s.close()
        backend.connections[0].transport.abortConnection()  # the paused pair never reads EOF
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)
        yield self.wait_for(lambda: not backend.connections[0].transport.connected)

    @defer.inlineCallbacks
    def test_backpressure_bounded_towards_client(self) -> Any:
        """A client that does not read pauses a backend that streams; buffers stay bounded."""
        sent = [0]
        paused = [False]

        @implementer(IPushProducer)
        class Streamer:
            def __init__(self, transport: Any) -> None:
                self.transport = transport

            def pauseProducing(self) -> None:
                paused[0] = True

            def resumeProducing(self) -> None:
                paused[0] = False
                self.pump()

            def stopProducing(self) -> None:
                paused[0] = True

            def pump(self) -> None:
                while not paused[0] and sent[0] < 50_000_000:
                    self.transport.write(b"z" * 65536)
                    sent[0] += 65536

        def on_connect(b: Backend) -> None:
            streamer = Streamer(b.transport)
            b.transport.registerProducer(streamer, True)
            reactor.callLater(0, streamer.pump)

        backend = BackendFactory(on_connect=on_connect, on_eof=lambda b: None)
        port, mux = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        s = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(s.close)
        s.sendall(REQUEST)  # and never read
        yield self.wait_for(lambda: paused[0])
        previous = -1
        while sent[0] != previous:  # until the backend stays paused
            previous = sent[0]
            yield self.settle(0.1)
        self.assertLess(sent[0], 50_000_000, "the backend was never paused")
        buffered = max(len(t.dataBuffer) + t._tempDataLen for t in _transports())
        self.assertLess(buffered, 1_000_000)
        s.close()
        backend.connections[0].transport.abortConnection()
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)

    @defer.inlineCallbacks
    def test_backend_dies_mid_stream(self) -> Any:
        """Bytes the backend sent before dying reach the client, then the client is closed."""

        def on_data(b: Backend) -> None:
            b.transport.write(b"partial")
            reactor.callLater(0.05, b.transport.abortConnection)

        backend = BackendFactory(on_data=on_data, on_eof=lambda b: None)
        port, mux = self.listen_mux(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.listen_backend(backend)}"]))
        answer = yield threads.deferToThread(exchange, port, REQUEST, False)
        self.assertEqual(answer, b"partial")
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)

    @defer.inlineCallbacks
    def test_client_leaves_while_dialling(self) -> Any:
        """A client that resets before the backend answers cancels the dial."""
        hanging = Hanging()
        port, mux = self.listen_mux(ProxyTarget(reactor, [hanging], connect_timeout=60))  # type: ignore[list-item]

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(REQUEST)
                time.sleep(0.1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # closed with RST: a FIN alone would be a half-close, still worth proxying

        yield threads.deferToThread(client)
        yield self.wait_for(lambda: hanging.cancelled > 0)
        self.assertEqual(mux.stats.refusals["backend_unreachable"], 0)
        self.assertEqual(mux.stats.for_route("proxied").active, 0)

    @defer.inlineCallbacks
    def test_pending_bounded_while_dialling(self) -> Any:
        """While the backend is being dialled, at most about PENDING_LIMIT bytes are read."""
        from portmux.targets.proxy import PENDING_LIMIT

        fronts: list[Any] = []
        release: list[defer.Deferred[Any]] = []

        class Slow:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                fronts.append(factory)
                d: defer.Deferred[Any] = defer.Deferred()
                release.append(d)
                return d

        port, mux = self.listen_mux(ProxyTarget(reactor, [Slow()], connect_timeout=60))  # type: ignore[list-item]
        s = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(s.close)
        s.setblocking(False)
        total, stalls = 0, 0
        while total < 50_000_000 and stalls < 40:
            try:
                total += s.send(REQUEST if not total else b"y" * 65536)
                stalls = 0
            except BlockingIOError:
                stalls += 1
                yield self.settle(0.01)
        self.assertLess(total, 50_000_000)
        pending = sum(map(len, fronts[0].pending))
        self.assertLessEqual(pending, PENDING_LIMIT + 65536)
        s.close()
        fronts[0].transport.loseConnection()
        yield self.wait_for(lambda: mux.stats.for_route("proxied").active == 0)


def _transports() -> list[Any]:
    """Every TCP transport the global reactor is watching."""
    return [s for s in reactor.getReaders() + reactor.getWriters() if hasattr(s, "dataBuffer")]


def _relays() -> list[Any]:
    """Every relay (targets/_relay.py) the global reactor is watching."""
    from portmux.targets._relay import Relay

    return [s for s in reactor.getReaders() if isinstance(s, Relay)]


class PublicTransportAPITests(ProxyTests):
    """Every proxy test again with the fast paths off in-process (public API only)."""

    def setUp(self) -> None:
        self.patch(_twisted, "FAST_PATHS", False)


class TransportEngineTests(ProxyTests):
    """Every proxy test again with the relay off: pairs copied through Twisted transports."""

    def setUp(self) -> None:
        self.patch(ProxyTarget, "relay", False)


class FromConfigTests(SynchronousTestCase):
    """The config's proxy table builds targets and reports problems with key paths."""

    def parse(self, value: str) -> Any:
        from portmux.daemon.config import parse_config

        text = ('[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
                f'[[route]]\nname = "p"\nmatch = {{ protocol = "ssh" }}\nproxy = {value}\n')
        return parse_config(text, "t.toml", reactor).routes[0].target

    def problems(self, value: str) -> list[str]:
        from portmux.daemon.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            self.parse(value)
        return [problem.key_path for problem in caught.exception.errors]

    def test_list(self) -> None:
        target = self.parse('["tcp:127.0.0.1:1", "unix:/tmp/x.sock"]')
        self.assertEqual(target.kind, "proxy")
        self.assertEqual([b.name for b in target.backends], ["tcp:127.0.0.1:1", "unix:/tmp/x.sock"])
        fast = _twisted.FAST_PATHS  # without: both dial through endpoint.connect()
        self.assertEqual(target.backends[0].tcp is not None, fast)
        self.assertEqual(target.backends[1].unix, "/tmp/x.sock" if fast else None)

    def test_table(self) -> None:
        target = self.parse(
            '{ endpoints = ["tcp:127.0.0.1:1"], connect_timeout = 2, proxy_header = "v2" }')
        self.assertEqual((target.connect_timeout, target.proxy_header), (2.0, "v2"))

    def test_rewrite_via(self) -> None:
        """net.tcp's Via rewriting: true (the backend's address) or a net.tcp://HOST:PORT."""
        self.assertFalse(self.parse('["tcp:127.0.0.1:1"]').rewrite_via)
        target = self.parse('{ endpoints = ["tcp:127.0.0.1:1"], rewrite_via = true }')
        self.assertIs(target.rewrite_via, True)
        self.assertIn("(Via rewritten)", target.description)
        target = self.parse('{ endpoints = ["tcp:127.0.0.1:1"], rewrite_via = "net.tcp://svc.internal:8808/" }')
        self.assertEqual(target.rewrite_via, "net.tcp://svc.internal:8808")
        for bad in ('"http://a:1"', '"net.tcp://a:1/path/"', '"net.tcp://a:x"', "1"):
            self.assertEqual(
                self.problems(f'{{ endpoints = ["tcp:127.0.0.1:1"], rewrite_via = {bad} }}'),
                ["route[0].proxy.rewrite_via"], bad,
            )

    def test_problems(self) -> None:
        cases = [
            ("[]", "route[0].proxy"),
            ('"nope:x"', "route[0].proxy[0]"),  # one string is one endpoint
            ("[3]", "route[0].proxy[0]"),
            ('{ endpoints = ["tcp:127.0.0.1:1"], proxy_header = "v3" }', "route[0].proxy.proxy_header"),
            ('{ endpoints = ["tcp:127.0.0.1:1"], connect_timeout = -1 }',
             "route[0].proxy.connect_timeout"),
            ('{ endpoints = ["tcp:127.0.0.1:1"], bogus = 1 }', "route[0].proxy.bogus"),
            ("{ connect_timeout = 1 }", "route[0].proxy.endpoints"),
        ]
        for value, key in cases:
            self.assertEqual(self.problems(value), [key], value)

    def test_bad_constructor_args(self) -> None:
        self.assertRaises(ValueError, ProxyTarget, reactor, [])
        self.assertRaises(ValueError, ProxyTarget, reactor, ["tcp:127.0.0.1:1"], proxy_header="v9")
