"""Bug 7: a client pipelining 100,000 requests and reading nothing makes portmux hold
a bounded number of answers: the channel stops parsing and reading instead."""

from __future__ import annotations

import resource as rusage
import socket

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from portmux.core.mux import Multiplexer
from portmux.targets.http_channel import MAX_PIPELINED, BoundedChannel

REQUEST = b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n"
BODY = b"x" * 400
COUNT = 100_000


class Counting(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render_GET(self, request: object) -> bytes:
        self.rendered += 1
        return BODY


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return rusage.getrusage(rusage.RUSAGE_SELF).ru_maxrss


class PipelinedFloodTests(TestCase):
    timeout = 60

    async def test_non_reading_client_is_paused_and_answers_stay_bounded(self) -> None:
        page = Counting()
        mux = Multiplexer(reactor, [])
        mux.add_route(page, name="web", protocol="http")
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        channels: list[BoundedChannel] = []
        original = BoundedChannel.connectionMade

        def remember(channel: BoundedChannel) -> None:
            channels.append(channel)
            original(channel)

        self.patch(BoundedChannel, "connectionMade", remember)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        self.addCleanup(client.close)
        rss_before = _rss_kib()
        data = memoryview(REQUEST * COUNT)
        sent, stalled = 0, 0
        while sent < len(data) and stalled < 20:  # bounded: stops once the server stops reading
            try:
                n = client.send(data[sent:sent + 65536])
            except BlockingIOError:
                n = 0
            sent += n
            stalled = stalled + 1 if n == 0 else 0
            await task.deferLater(reactor, 0.01 if n == 0 else 0, lambda: None)
        last, steady = -1, 0
        for _ in range(300):  # settle: the kernel's buffers fill, then nothing more is answered
            await task.deferLater(reactor, 0.01, lambda: None)
            steady = steady + 1 if page.rendered == last else 0
            last = page.rendered
            if steady >= 20:
                break
        self.assertGreaterEqual(steady, 20, "answering must stop while the client reads nothing")
        self.assertEqual(len(channels), 1)
        channel = channels[0]
        handle = channel.transport.getHandle()
        kernel = (handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                  + client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        answer = len(BODY) + 100  # an answer is at least this long
        self.assertTrue(channel.paused, "the channel must stop parsing a non-reading client")
        self.assertTrue(channel.transport_full)
        self.assertGreater(channel.holds, 0)
        # Answered <= what the kernel holds + portmux's bounded send buffer + one batch.
        bound = kernel + 2 * channel.transport.bufferSize + MAX_PIPELINED * 2 * answer
        self.assertLess(page.rendered * answer, bound)
        self.assertLess(page.rendered, COUNT)
        self.assertLess(_rss_kib() - rss_before, 20 * 1024)
        rendered = page.rendered
        # Once the client reads, answering resumes.
        deadline = reactor.seconds() + 10
        while page.rendered <= rendered + MAX_PIPELINED and reactor.seconds() < deadline:
            try:
                client.recv(1 << 20)
            except BlockingIOError:
                await task.deferLater(reactor, 0.002, lambda: None)
        self.assertGreater(page.rendered, rendered)
        client.close()
        for _ in range(100):
            if channel.transport is None or not channel.transport.connected:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(mux.stats.routes["web"].active, 0)

    async def test_pipelined_requests_are_all_answered_in_order(self) -> None:
        """A client that does read gets every pipelined answer, across batches."""
        page = Counting()
        mux = Multiplexer(reactor, [])
        mux.add_route(page, name="web", protocol="http")
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.socket()
        client.connect(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        self.addCleanup(client.close)
        n = 5 * MAX_PIPELINED + 3
        client.sendall(REQUEST * n)
        received = b""
        for _ in range(500):
            try:
                received += client.recv(65536)
            except BlockingIOError:
                await task.deferLater(reactor, 0.005, lambda: None)
            if received.count(b"HTTP/1.1 200") == n and received.endswith(BODY):
                break
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), n)
        self.assertEqual(page.rendered, n)
