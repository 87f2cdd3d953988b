"""The splice(2) fast path over real loopback sockets: bulk both ways, half-close, slow readers, resets.

The proxy runs in the test's reactor; the client and the backend are blocking
sockets driven from threads, so every byte crosses real kernel sockets and is
hashed on arrival.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from typing import Any, ClassVar

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmux import _twisted
from portmux.core.limits import Timeouts
from portmux.core.mux import Multiplexer
from portmux.targets import _relay, _splice
from portmux.targets.proxy import ProxyTarget

REQUEST = b"GET /bulk HTTP/1.1\r\nHost: example.test\r\n\r\n"
BULK = int(os.environ.get("PORTMUX_SPLICE_TEST_BYTES", str(1 << 30)))
"""Bytes each way in the bulk test: 1 GiB (issue 14, ~3 s per engine here); PORTMUX_SPLICE_TEST_BYTES lowers it."""
CHUNK = 1 << 20


def pattern(size: int, seed: int) -> bytes:
    """Deterministic, non-repeating-looking bytes (so a reordered chunk changes the hash)."""
    return hashlib.shake_256(seed.to_bytes(8, "big")).digest(size)


def send_stream(skt: socket.socket, total: int, seed: int) -> str:
    """Send ``total`` bytes of a seeded pattern; returns their sha256."""
    block = pattern(CHUNK, seed)
    digest = hashlib.sha256()
    left = total
    counter = 0
    while left:
        piece = block[: min(left, CHUNK)]
        piece = struct.pack(">Q", counter) + piece[8:] if len(piece) >= 8 else piece
        skt.sendall(piece)
        digest.update(piece)
        left -= len(piece)
        counter += 1
    return digest.hexdigest()


def receive_all(skt: socket.socket, pause: float = 0.0, stop_at: int | None = None) -> tuple[int, str]:
    """Read until EOF (or ``stop_at`` bytes); returns (bytes, sha256)."""
    digest = hashlib.sha256()
    count = 0
    buf = bytearray(CHUNK)
    while stop_at is None or count < stop_at:
        try:
            got = skt.recv_into(buf)
        except ConnectionResetError:
            break
        if not got:
            break
        digest.update(memoryview(buf)[:got])
        count += got
        if pause:
            time.sleep(pause)
    return count, digest.hexdigest()


class RecordingPair(_splice.SplicedPair):
    """A SplicedPair that lists itself, so a test can tell the kernel did the copying."""

    made: ClassVar[list[RecordingPair]] = []
    wide = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.made.append(self)
        if self.wide:
            self.server.skt.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)


class RecordingRelayPair(_relay.RelayPair):
    """A relayed pair that lists itself once it splices, so a test can tell the kernel did the copying."""

    __slots__ = ()
    made: ClassVar[list[RecordingRelayPair]] = []
    wide = False

    def start(self, client: socket.socket, server: socket.socket, *data: Any) -> None:
        if self.wide:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        super().start(client, server, *data)

    def splice(self) -> None:
        super().splice()
        if self.client.pipe is not None:
            self.made.append(self)


class BudgetTests(SynchronousTestCase):
    def test_never_without_a_threshold_or_plain_sockets(self) -> None:
        self.assertEqual(_splice.budget(reactor, False, 10), _splice.NEVER)
        self.assertEqual(_splice.budget(reactor, True, None), _splice.NEVER)
        self.assertEqual(_splice.budget(object(), True, 10), _splice.NEVER)  # no file descriptors


class SpliceTests(TestCase):
    """client (thread) → Multiplexer → ProxyTarget → relay, spliced → backend (thread)."""

    timeout = 120
    relay = True

    def setUp(self) -> None:
        if not _splice.AVAILABLE or not _twisted.FAST_PATHS:
            self.skipTest("splice(2) or the Twisted fast paths are unavailable here")
        RecordingPair.made = []
        RecordingRelayPair.made = []
        self.patch(_splice, "SplicedPair", RecordingPair)
        self.patch(_relay, "RelayPair", RecordingRelayPair)
        self.recording: Any = RecordingRelayPair if self.relay else RecordingPair
        self.backend = socket.socket()
        self.backend.bind(("127.0.0.1", 0))
        self.backend.listen(8)
        self.addCleanup(self.backend.close)
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.backend.getsockname()[1]}"])
        target.splice_after = 64 * 1024
        target.relay = self.relay
        # The slow-reader tests stall a reader for a while: a generous tunnel timeout here;
        # the tunnel-timeout test sets its own short one.
        self.mux = Multiplexer(reactor, timeouts=Timeouts(tunnel=30.0, server_response=0.0))
        self.mux.add_route(target, name="proxied", default=True)
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """A client connection and the backend's accepted end (the request consumed)."""
        client = socket.create_connection(("127.0.0.1", self.port))
        client.sendall(REQUEST)
        server, _ = self.backend.accept()
        got = b""
        while len(got) < len(REQUEST):
            got += server.recv(len(REQUEST) - len(got))
        assert got == REQUEST
        for s in (client, server):
            s.settimeout(60)
            self.addCleanup(s.close)
        return client, server

    async def settled(self) -> None:
        """Wait until the multiplexer has closed every proxied connection."""
        end = time.monotonic() + 10
        while self.mux.stats.for_route("proxied").active:
            if time.monotonic() > end:
                self.fail("proxied connections never closed")
            await task.deferLater(reactor, 0.02, lambda: None)

    def made(self) -> list[Any]:
        """The pairs the kernel copied for (in the engine under test)."""
        return self.recording.made  # type: ignore[no-any-return]

    def assert_spliced(self, at_least: int) -> None:
        self.assertEqual(len(self.made()), 1)
        pair = self.made()[0]
        if self.relay:
            self.assertGreaterEqual(pair.spliced, at_least - 512 * 1024)  # the first bytes go via Python
            self.assertEqual(pair.closed_sides, 2)
            self.assertEqual(pair.relay.pairs, 0)
            self.assertEqual(pair.relay.sides, {})  # both sockets and their pipes given back
            return
        self.assertGreaterEqual(pair.moved, at_least - 512 * 1024)  # the first bytes go via Python
        self.assertTrue(pair.done)
        self.assertEqual((pair.up.read_fd, pair.down.read_fd), (-1, -1))  # pipes closed

    @defer.inlineCallbacks
    def test_bulk_both_ways_byte_exact(self) -> Any:
        """BULK bytes each way at once arrive unchanged; both FINs pass; the kernel copied them."""

        def run() -> tuple[Any, ...]:
            client, server = self.connect()
            results: dict[str, Any] = {}

            def side(name: str, skt: socket.socket, seed: int) -> None:
                results[name + "-sent"] = send_stream(skt, BULK, seed)
                skt.shutdown(socket.SHUT_WR)

            senders = [
                threading.Thread(target=side, args=("up", client, 1)),
                threading.Thread(target=side, args=("down", server, 2)),
            ]
            for t in senders:
                t.start()
            receiver = threading.Thread(
                target=lambda: results.__setitem__("up-got", receive_all(server))
            )
            receiver.start()
            results["down-got"] = receive_all(client)
            for t in [*senders, receiver]:
                t.join(120)
            return results["up-sent"], results["up-got"], results["down-sent"], results["down-got"]

        up_sent, up_got, down_sent, down_got = yield threads.deferToThread(run)
        self.assertEqual(up_got, (BULK, up_sent))
        self.assertEqual(down_got, (BULK, down_sent))
        yield defer.ensureDeferred(self.settled())
        self.assert_spliced(2 * BULK)

    @defer.inlineCallbacks
    def test_backend_reading_after_both_fins_passed_gets_every_byte(self) -> Any:
        """The pair ends (both FINs passed) while the backend has not read yet: closed, never reset.

        At the end each socket has both FINs, so the reactor reports a hang-up on it;
        that is an orderly end, not a lost connection to pass on as a reset (which
        would drop what the backend had not read yet).
        """
        # Portmux's backend socket can hold all the bytes, so they wait there as under load.
        self.patch(self.recording, "wide", True)
        self.backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # reads little unread
        client, server = yield threads.deferToThread(self.connect)
        size = 1 << 20

        def both_ways() -> tuple[Any, ...]:
            results: dict[str, Any] = {}

            def answer() -> None:
                results["down-sent"] = send_stream(server, size, 7)
                server.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=answer)
            sender.start()
            up_sent = send_stream(client, size, 6)
            client.shutdown(socket.SHUT_WR)
            down_got = receive_all(client)
            sender.join(60)
            return up_sent, results["down-sent"], down_got

        up_sent, down_sent, down_got = yield threads.deferToThread(both_ways)
        self.assertEqual(down_got, (size, down_sent))
        yield defer.ensureDeferred(self.settled())  # the pair is over; the backend reads only now
        up_got = yield threads.deferToThread(receive_all, server)
        self.assertEqual(up_got, (size, up_sent))
        self.assert_spliced(2 * size)

    @defer.inlineCallbacks
    def test_client_half_close(self) -> Any:
        """The client sends and shuts its write side; the backend still answers in full."""

        def run() -> tuple[Any, ...]:
            client, server = self.connect()
            sent = send_stream(client, 8 << 20, 3)
            client.shutdown(socket.SHUT_WR)
            got = receive_all(server)  # ends at the client's FIN, passed on
            answer = send_stream(server, 8 << 20, 4)
            server.close()
            return sent, got, answer, receive_all(client)

        sent, got, answer, back = yield threads.deferToThread(run)
        self.assertEqual(got, (8 << 20, sent))
        self.assertEqual(back, (8 << 20, answer))
        yield defer.ensureDeferred(self.settled())
        self.assert_spliced(16 << 20)

    @defer.inlineCallbacks
    def test_backend_half_close(self) -> Any:
        """The backend sends and shuts its write side; the client still sends in full."""

        def run() -> tuple[Any, ...]:
            client, server = self.connect()
            sent = send_stream(server, 8 << 20, 5)
            server.shutdown(socket.SHUT_WR)
            got = receive_all(client)
            more = send_stream(client, 8 << 20, 6)
            client.close()
            return sent, got, more, receive_all(server)

        sent, got, more, back = yield threads.deferToThread(run)
        self.assertEqual(got, (8 << 20, sent))
        self.assertEqual(back, (8 << 20, more))
        yield defer.ensureDeferred(self.settled())
        self.assert_spliced(16 << 20)

    def _slow_reader(self, reader_is_client: bool) -> Any:
        """The reader stops: the writer is held back by a bounded amount; then all arrives."""
        total = 48 << 20

        def run() -> tuple[Any, ...]:
            client, server = self.connect()
            writer, reader = (server, client) if reader_is_client else (client, server)
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            # Prime the pair past splice_after so the kernel path is on.
            prime = send_stream(writer, 1 << 20, 7)
            primed = receive_all(reader, stop_at=1 << 20)
            writer.setblocking(False)
            accepted = 0
            block = pattern(CHUNK, 8)
            digest = hashlib.sha256()
            stalls = 0
            while accepted < total and stalls < 50:
                try:
                    n = writer.send(block)
                except BlockingIOError:
                    stalls += 1
                    time.sleep(0.01)
                    continue
                digest.update(block[:n])
                accepted += n
                stalls = 0
            held_back = accepted
            writer.setblocking(True)
            left = total - accepted
            tail = (block * (left // CHUNK + 1))[:left]
            rest = threading.Thread(target=lambda: writer.sendall(tail))
            digest.update(tail)
            rest.start()
            got = receive_all(reader, pause=0.0005, stop_at=total)
            rest.join(60)
            writer.close()
            return prime, primed, held_back, total, digest.hexdigest(), got

        return run

    @defer.inlineCallbacks
    def test_slow_client(self) -> Any:
        prime, primed, held, total, digest, got = yield threads.deferToThread(self._slow_reader(True))
        self.assertEqual(primed, (1 << 20, prime))
        self.assertLess(held, 40 << 20, "the backend was never held back")
        self.assertEqual(got, (total, digest))
        self.assertEqual(len(self.made()), 1)

    @defer.inlineCallbacks
    def test_slow_backend(self) -> Any:
        prime, primed, held, total, digest, got = yield threads.deferToThread(self._slow_reader(False))
        self.assertEqual(primed, (1 << 20, prime))
        self.assertLess(held, 40 << 20, "the client was never held back")
        self.assertEqual(got, (total, digest))
        self.assertEqual(len(self.made()), 1)

    @defer.inlineCallbacks
    def test_backend_reset_mid_splice(self) -> Any:
        """A backend that resets while bytes flow: the client's connection ends, nothing leaks."""

        def run() -> tuple[int, int]:
            client, server = self.connect()
            sent = send_stream(server, 4 << 20, 9)
            assert sent
            got = receive_all(client, stop_at=4 << 20)[0]
            stop = threading.Event()

            def keep_sending() -> None:
                try:
                    while not stop.is_set():
                        client.sendall(b"u" * 65536)
                except OSError:
                    pass

            sender = threading.Thread(target=keep_sending)
            sender.start()
            time.sleep(0.05)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()  # RST, with the client's bytes unread
            rest = receive_all(client)[0]  # EOF or reset: it ends
            stop.set()
            sender.join(10)
            return got, rest

        got, rest = yield threads.deferToThread(run)
        self.assertEqual(got, 4 << 20)
        self.assertEqual(rest, 0)
        yield defer.ensureDeferred(self.settled())
        self.assert_spliced(4 << 20)

    @defer.inlineCallbacks
    def test_chatty_pair_is_never_spliced(self) -> Any:
        """Small request/response messages, more than splice_after in total, stay in Python."""
        rounds, size = 600, 512  # 300 KiB each way, well past splice_after = 64 KiB

        def run() -> int:
            client, server = self.connect()
            echoed = 0
            for n in range(rounds):
                message = bytes([n % 251]) * size
                client.sendall(message)
                got = b""
                while len(got) < size:
                    got += server.recv(size - len(got))
                server.sendall(got)
                back = b""
                while len(back) < size:
                    back += client.recv(size - len(back))
                echoed += back == message
            client.close()
            server.close()
            return echoed

        echoed = yield threads.deferToThread(run)
        self.assertEqual(echoed, rounds)
        yield defer.ensureDeferred(self.settled())
        self.assertEqual(self.made(), [])

    @defer.inlineCallbacks
    def test_spliced_pair_stays_active_for_the_tunnel_timeout(self) -> Any:
        """A slow steady upload, spliced, outlives a 0.5 s tunnel timeout three times over."""
        # A short tunnel timeout: a spliced pair must still count as active (its legs' reads move).
        self.mux.timeouts = Timeouts(tunnel=0.5, server_response=0.0)

        def run() -> tuple[str, tuple[int, str]]:
            client, server = self.connect()
            digest = hashlib.sha256()
            block = pattern(256 * 1024, 11)
            received: dict[str, Any] = {}
            reader = threading.Thread(target=lambda: received.__setitem__("got", receive_all(server)))
            reader.start()
            for _ in range(16):  # 4 MiB over ~1.6 s, bulk-sized writes
                client.sendall(block)
                digest.update(block)
                time.sleep(0.1)
            client.shutdown(socket.SHUT_WR)
            reader.join(30)
            server.close()
            return digest.hexdigest(), received["got"]

        sent, got = yield threads.deferToThread(run)
        self.assertEqual(got, (16 * 256 * 1024, sent))
        yield defer.ensureDeferred(self.settled())
        self.assertEqual(len(self.made()), 1)


class TransportSpliceTests(SpliceTests):
    """The same, with the relay off: the proxy's transports, then SplicedPair (targets/_splice.py)."""

    relay = False
