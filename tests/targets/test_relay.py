"""The relay (targets/_relay.py) over real loopback sockets: what is particular to it.

The proxy's behaviour (half-close, backpressure, resets, timeouts, splice) is tested
on both engines by test_proxy.py, test_proxy_timeouts.py and test_splice.py; here:
the relay gives every socket back, leaves the reactor when idle, hands the
connection's end to the sniffer (counters, TCP byte totals for the access log),
is reached by a drain's abort, and closes every pair when the reactor stops.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from portmux import _twisted
from portmux.core.mux import Multiplexer
from portmux.targets import _relay
from portmux.targets.proxy import ProxyTarget

REQUEST = b"GET /relay HTTP/1.1\r\nHost: example.test\r\n\r\n"


class RelayTests(TestCase):
    """client (thread) → Multiplexer → ProxyTarget → relay → backend (thread)."""

    timeout = 60

    def setUp(self) -> None:
        if not _twisted.FAST_PATHS:
            self.skipTest("the relay needs the Twisted fast paths")
        self.backend = socket.socket()
        self.backend.bind(("127.0.0.1", 0))
        self.backend.listen(64)
        self.addCleanup(self.backend.close)
        self.target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.backend.getsockname()[1]}"])
        self.mux = Multiplexer(reactor)
        self.mux.add_route(self.target, name="proxied", protocol="http")
        self.mux.add_route(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.backend.getsockname()[1]}"]),
                           name="raw", default=True)
        self.records: list[Any] = []
        self.mux.stats.observers.append(self.records.append)
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def relay(self) -> _relay.Relay:
        return _relay.Relay.of(self.mux)

    def connect(self, first: bytes = REQUEST) -> tuple[socket.socket, socket.socket]:
        """A client and the backend's accepted end, ``first`` read off the backend."""
        client = socket.create_connection(("127.0.0.1", self.port))
        client.sendall(first)
        server, _ = self.backend.accept()
        got = b""
        while len(got) < len(first):
            got += server.recv(len(first) - len(got))
        assert got == first, got
        for s in (client, server):
            s.settimeout(20)
            self.addCleanup(s.close)
        return client, server

    async def settled(self) -> None:
        end = time.monotonic() + 10
        while self.mux.connections:  # every route's connections ended
            if time.monotonic() > end:
                self.fail("relayed connections never closed")
            await task.deferLater(reactor, 0.02, lambda: None)

    def assert_relay_empty(self) -> None:
        relay = self.relay()
        self.assertEqual((relay.pairs, relay.sides), (0, {}))
        self.assertNotIn(relay, reactor.getReaders())  # an idle relay is not watched

    @defer.inlineCallbacks
    def test_many_pairs_give_every_socket_back(self) -> Any:
        """40 concurrent exchanges: each byte-exact; then no pair, socket or reader is left."""

        def one(number: int) -> bytes:
            client, server = self.connect()
            client.sendall(b"ping %d" % number)
            got = server.recv(100)
            server.sendall(b"pong " + got)
            server.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := client.recv(100):
                answer += chunk
            client.close()
            server.recv(10)  # our FIN passed on
            server.close()
            return answer

        def run() -> list[bytes]:
            results: list[bytes] = [b""] * 40
            workers = [threading.Thread(target=lambda n=n: results.__setitem__(n, one(n))) for n in range(40)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(30)
            return results

        answers = yield threads.deferToThread(run)
        self.assertEqual(answers, [b"pong ping %d" % n for n in range(40)])
        yield defer.ensureDeferred(self.settled())
        self.assert_relay_empty()
        self.assertEqual(self.mux.stats.for_route("proxied").connections, 40)

    @defer.inlineCallbacks
    def test_the_access_record_has_the_kernels_byte_counts(self) -> Any:
        """A relayed connection's record: bytes each way from TCP_INFO, who closed first."""

        def run() -> None:
            client, server = self.connect()
            client.sendall(b"x" * 1000)
            got = 0
            while got < 1000:
                got += len(server.recv(4096))
            server.sendall(b"y" * 5000)
            server.close()
            got = 0
            while chunk := client.recv(65536):
                got += len(chunk)
            assert got == 5000, got
            client.close()

        yield threads.deferToThread(run)
        yield defer.ensureDeferred(self.settled())
        [record] = self.records
        self.assertEqual((record.route, record.bytes_in, record.bytes_out), ("proxied", len(REQUEST) + 1000, 5000))
        self.assertEqual(record.end, "backend_close")

    @defer.inlineCallbacks
    def test_a_drain_abort_reaches_the_relay(self) -> Any:
        """The drain's deadline aborts sniffer.transport: both sockets are reset and forgotten."""
        client, server = yield threads.deferToThread(self.connect)
        self.assertEqual(self.relay().pairs, 1)
        [sniffer] = list(self.mux.connections)
        sniffer.transport.abortConnection()

        def ends(skt: socket.socket) -> bytes:
            try:
                return skt.recv(10)
            except ConnectionResetError:
                return b"reset"

        self.assertEqual((yield threads.deferToThread(ends, client)), b"reset")
        self.assertIn((yield threads.deferToThread(ends, server)), (b"reset", b""))
        yield defer.ensureDeferred(self.settled())
        self.assert_relay_empty()
        self.assertEqual(self.mux.connections, set())

    @defer.inlineCallbacks
    def test_reactor_stop_closes_every_pair(self) -> Any:
        """What the reactor does at shutdown (connectionLost on every reader) ends every pair."""
        for _ in range(3):
            yield threads.deferToThread(self.connect)
        relay = self.relay()
        self.assertEqual(relay.pairs, 3)
        reactor.removeReader(relay)
        relay.connectionLost(None)
        self.assertEqual((relay.pairs, relay.sides), (0, {}))
        yield defer.ensureDeferred(self.settled())
        self.assertEqual(self.mux.connections, set())

    @defer.inlineCallbacks
    def test_tcpmux_answer_goes_first(self) -> Any:
        """A TCPMUX client gets ``+`` (written while sniffing) before the backend's bytes."""
        self.mux.add_route(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.backend.getsockname()[1]}"]),
                           name="svc", service="svc")

        def run() -> bytes:
            client = socket.create_connection(("127.0.0.1", self.port))
            self.addCleanup(client.close)
            client.sendall(b"svc\r\n")
            server, _ = self.backend.accept()
            self.addCleanup(server.close)
            server.sendall(b"hello")
            server.close()
            client.settimeout(10)
            got = b""
            while chunk := client.recv(100):
                got += chunk
            client.close()
            return got

        self.assertEqual((yield threads.deferToThread(run)), b"+\r\nhello")
        yield defer.ensureDeferred(self.settled())
        self.assert_relay_empty()

    @defer.inlineCallbacks
    def test_a_slow_client_holds_back_the_backend_without_splice(self) -> Any:
        """Copying in Python, the relay keeps at most one read for a client that does not read."""
        self.target.splice_after = None

        def run() -> tuple[int, int, int]:
            client, server = self.connect()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            server.setblocking(False)
            block = b"z" * 65536
            accepted = stalls = 0
            while stalls < 30 and accepted < 64 << 20:
                try:
                    accepted += server.send(block)
                    stalls = 0
                except BlockingIOError:
                    stalls += 1
                    time.sleep(0.01)
            owed = max(len(side.owed) for side in list(self.relay().sides.values()))
            server.setblocking(True)
            server.close()
            got = 0
            while chunk := client.recv(1 << 20):
                got += len(chunk)
            client.close()
            return accepted, got, owed

        accepted, got, owed = yield threads.deferToThread(run)
        self.assertLess(accepted, 32 << 20, "the backend was never held back")
        self.assertEqual(got, accepted)
        self.assertLessEqual(owed, _relay.READ_SIZE)
        yield defer.ensureDeferred(self.settled())
        self.assert_relay_empty()

    @defer.inlineCallbacks
    def test_raw_tcp_reset_passes_on_http_gets_an_orderly_close(self) -> Any:
        """A backend's reset resets a raw-TCP client; an HTTP client sees an orderly EOF."""

        def run(first: bytes) -> bytes:
            client, server = self.connect(first)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            server.close()
            try:
                return client.recv(10) or b"eof"
            except ConnectionResetError:
                return b"reset"
            finally:
                client.close()

        self.assertEqual((yield threads.deferToThread(run, b"\x00\x01raw bytes")), b"reset")
        self.assertEqual((yield threads.deferToThread(run, REQUEST)), b"eof")
        yield defer.ensureDeferred(self.settled())
        self.assert_relay_empty()

    @defer.inlineCallbacks
    def test_an_error_in_one_pair_leaves_the_others_running(self) -> Any:
        """A bug raised while serving one pair resets that pair only, with one log line."""
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        first = yield threads.deferToThread(self.connect)
        second = yield threads.deferToThread(self.connect)
        relay = self.relay()
        broken = next(side for side in relay.sides.values() if side.skt.getpeername() == first[0].getsockname())
        original = _relay._Side.take_from

        def take_from(sink: Any, source: Any) -> None:
            if source is broken:
                raise RuntimeError("a bug")
            original(sink, source)

        self.patch(_relay._Side, "take_from", take_from)

        def run() -> tuple[bytes, bytes]:
            first[0].sendall(b"trigger")
            try:
                ended = first[0].recv(10) or b"eof"
            except ConnectionResetError:
                ended = b"reset"
            second[0].sendall(b"still here")
            return ended, second[1].recv(100)

        ended, passed = yield threads.deferToThread(run)
        self.assertEqual((ended, passed), (b"reset", b"still here"))
        self.assertEqual(relay.pairs, 1)
        self.assertEqual([e["log_format"] for e in logged if "relay:" in e.get("log_format", "")],
                         ["relay: closing a pair after an error"])
        self.flushLoggedErrors(RuntimeError)
