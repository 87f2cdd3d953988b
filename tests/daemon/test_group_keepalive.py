"""A kept-alive HTTP connection a child serves moves to the parent at a later request for a worker route.

In one process, two Multiplexers joined by a real socketpair (as test_group_channel):
the "child" serves a static resource route itself and gets the parent's registered
route; a real loopback client's first request is answered by the child, a later one
for the parent's route goes up with its socket and every byte after it, and the
parent serves the rest of the connection — sequential, pipelined, with a body, with
``Expect: 100-continue``, behind an unread large answer (waited for; 421 when it is
not read in time), and 503 when the parent is gone.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.daemon.group_channel import ChildLink, ParentLink
from portmux.targets import _http_pass_on
from portmux.targets.resource import ResourceTarget
from tests.daemon.group_support import linked
from tests.support import fd_count, log_lines, turn, wait_until

WORKER = "proxy:protocol=http,path=/w"
BIG = 48 << 10  # over the small socket buffers set below, under Twisted's 64 KiB that pauses the channel


class Says(Resource):
    """Answers ``WHO METHOD PATH BODY-LENGTH``; ``/s/big`` answers BIG bytes."""

    isLeaf = True

    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def render(self, request: Any) -> bytes:
        if request.path == b"/s/big":
            return b"x" * BIG
        body = request.content.read() if request.content is not None else b""
        return f"{self.who} {request.method.decode()} {request.path.decode()} {len(body)}".encode()


def responses(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete HTTP/1.1 responses (status, body) at the start of ``data``, and the rest.

    Interim 1xx responses are listed too (with an empty body).
    """
    found = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return found, data
        head = data[:end].decode("latin-1")
        status = int(head.split(" ", 2)[1])
        if 100 <= status < 200:
            found.append((status, b""))
            data = data[end + 4:]
            continue
        length = re.search(r"(?im)^content-length:\s*(\d+)", head)
        assert length is not None, head
        size = int(length.group(1))
        if len(data) < end + 4 + size:
            return found, data
        found.append((status, data[end + 4:end + 4 + size]))
        data = data[end + 4 + size:]


class Client:
    """A real non-blocking loopback client driven from the test's reactor turns."""

    def __init__(self, port: int, receive_buffer: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.got = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> None:
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                self.closed = True
                return
            self.got += chunk

    async def answers(self, count: int, limit: float = 10.0) -> list[tuple[int, bytes]]:
        """Read until ``count`` complete responses (1xx included) arrived; return and consume them."""
        for _ in range(int(limit / 0.002)):
            self._read()
            found, rest = responses(self.got)
            if len(found) >= count or self.closed:
                break
            await turn(0.002)
        found, rest = responses(self.got)
        assert len(found) >= count, (found, rest[:200])
        taken = found[:count]
        # Keep what follows the ones taken.
        consumed = self.got
        for _ in taken:
            end = consumed.find(b"\r\n\r\n")
            head = consumed[:end].decode("latin-1")
            size = re.search(r"(?im)^content-length:\s*(\d+)", head)
            consumed = consumed[end + 4 + (int(size.group(1)) if size else 0):]
        self.got = consumed
        return taken

    async def closes(self, limit: float = 5.0) -> bool:
        for _ in range(int(limit / 0.01)):
            self._read()
            if self.closed:
                return True
            await turn()
        return False

    def close(self) -> None:
        self.sock.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: site.example\r\n{extra}\r\n".encode()


class KeptAliveTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.lines = log_lines(self)
        self.parent = Multiplexer(reactor)
        self.child = Multiplexer(reactor)
        # Both load the same config: the static route; the worker's route is the parent's alone.
        self.parent.add_route(ResourceTarget(Says("parent-static")), name="static", protocol="http", path="/s")
        self.child.add_route(ResourceTarget(Says("child-static")), name="static", protocol="http", path="/s")
        self.parent.add_registered_route(
            Route(WORKER, Match(protocol="http", path="/w"), ResourceTarget(Says("parent-worker"))))

    async def link(self) -> tuple[ChildLink, ParentLink]:
        """Join the two multiplexers as ProcessGroup and group_child do (both ends in this reactor)."""
        return await linked(self, self.parent, self.child)  # type: ignore[no-any-return]

    async def serve(self) -> tuple[int, ChildLink, ParentLink]:
        parent_side, child_side = await self.link()
        port = reactor.listenTCP(0, self.child.listener_factory(name="child"), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, parent_side, child_side

    def client(self, port: int) -> Client:
        client = Client(port)
        self.addCleanup(client.close)
        return client

    async def slow_client(self, port: int) -> Client:
        """A client whose socket buffers (and the child's send buffer) are small, so an
        answer it does not read stays unsent in the child."""
        client = Client(port, receive_buffer=2048)
        self.addCleanup(client.close)
        await wait_until(lambda: self.child.connections)
        (accepted,) = self.child.connections
        accepted.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return client

    async def settle(self) -> None:
        await wait_until(lambda: not self.parent.connections and not self.child.connections)

    async def test_a_later_request_moves_the_connection_up(self) -> None:
        port, _, _ = await self.serve()
        warm = self.client(port)  # both sides' lazily built objects exist before counting descriptors
        warm.send(get("/s/0"))
        await warm.answers(1)
        warm.send(get("/w/0"))
        await warm.answers(1)
        warm.close()
        await self.settle()
        before = fd_count()
        self.lines.clear()
        client = self.client(port)
        client.send(get("/s/1"))
        self.assertEqual(await client.answers(1), [(200, b"child-static GET /s/1 0")])
        client.send(get("/w/2"))
        self.assertEqual(await client.answers(1), [(200, b"parent-worker GET /w/2 0")])
        client.send(get("/s/3"))  # the rest of the connection is the parent's
        self.assertEqual(await client.answers(1), [(200, b"parent-static GET /s/3 0")])
        client.close()
        await self.settle()
        self.assertEqual(fd_count(), before)
        self.assertFalse([line for line in self.lines if "421" in line], self.lines)
        # Accepted once in the two; routed on its first route by the child, on the worker's by the parent.
        self.assertEqual((self.child.stats.accepted, self.parent.stats.accepted), (2, 0))
        self.assertEqual(self.child.stats.for_route(WORKER).connections, 0)
        self.assertEqual(self.parent.stats.for_route(WORKER).connections, 2)
        self.assertEqual(self.parent.stats.for_listener("process 2").routed[WORKER], 2)

    async def test_pipelined_requests_are_answered_in_order(self) -> None:
        port, _, _ = await self.serve()
        for round_ in range(5):
            client = self.client(port)
            client.send(get(f"/s/{round_}a")
                        + b"POST /w/b HTTP/1.1\r\nHost: site.example\r\nContent-Length: 5\r\n\r\nhello"
                        + get(f"/s/{round_}c") + get("/w/d")
                        + b"POST /w/e HTTP/1.1\r\nHost: site.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"3\r\nabc\r\n0\r\n\r\n")
            self.assertEqual(await client.answers(5), [
                (200, f"child-static GET /s/{round_}a 0".encode()),
                (200, b"parent-worker POST /w/b 5"),
                (200, f"parent-static GET /s/{round_}c 0".encode()),
                (200, b"parent-worker GET /w/d 0"),
                (200, b"parent-worker POST /w/e 3"),
            ])
            client.close()
        await self.settle()

    async def test_expect_continue_is_answered_once(self) -> None:
        port, _, _ = await self.serve()
        client = self.client(port)
        client.send(get("/s/1"))
        self.assertEqual(await client.answers(1), [(200, b"child-static GET /s/1 0")])
        client.send(b"POST /w/2 HTTP/1.1\r\nHost: site.example\r\nContent-Length: 4\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        self.assertEqual(await client.answers(1), [(100, b"")])  # from the parent, not the child too
        client.send(b"body")
        self.assertEqual(await client.answers(1), [(200, b"parent-worker POST /w/2 4")])
        self.assertNotIn(b"100 Continue", client.got)

    async def test_an_unread_answer_is_sent_first(self) -> None:
        port, _, _ = await self.serve()
        client = await self.slow_client(port)
        client.send(get("/s/big") + get("/w/after"))
        await turn(0.5)  # the big answer fills the socket buffers; the child waits
        self.assertEqual(self.parent.stats.for_route(WORKER).connections, 0)
        found = await client.answers(2)
        self.assertEqual([status for status, _ in found], [200, 200])
        self.assertEqual(len(found[0][1]), BIG)
        self.assertEqual(found[1][1], b"parent-worker GET /w/after 0")

    async def test_an_answer_unread_too_long_gets_421(self) -> None:
        self.patch(_http_pass_on, "SENT_WAIT", 0.3)
        port, _, _ = await self.serve()
        client = await self.slow_client(port)
        client.send(get("/s/big") + get("/w/late"))
        await turn(1.0)
        found = await client.answers(2)
        self.assertEqual(len(found[0][1]), BIG)
        self.assertEqual(found[1][0], 421)
        self.assertIn(b"reconnect", found[1][1])
        self.assertTrue(await client.closes())
        said = [line for line in self.lines if "421" in line]
        self.assertEqual(len(said), 1, said)
        self.assertIn("not sent within 0.3 s", said[0])

    async def test_parent_gone_the_request_gets_503(self) -> None:
        port, parent_side, child_side = await self.serve()
        parent_side.transport.loseConnection()
        await wait_until(lambda: child_side.gone)
        client = self.client(port)
        client.send(get("/s/1"))
        self.assertEqual(await client.answers(1), [(200, b"child-static GET /s/1 0")])
        self.lines.clear()
        client.send(get("/w/2"))
        found = await client.answers(1)
        self.assertEqual(found[0][0], 503)
        self.assertTrue(await client.closes())
        self.assertEqual(len([line for line in self.lines if line.startswith("refused")]), 1, self.lines)
        await wait_until(lambda: not self.child.connections)
