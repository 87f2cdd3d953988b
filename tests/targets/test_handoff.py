"""detach(): give a TCP socket away without shutdown(2) or RST; handoff message facts."""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmux.core.preamble import Preamble
from portmux.targets.handoff import (
    DetachError,
    accept_bytes,
    detach,
    peer_facts,
    preamble_facts,
    socket_of,
)


class Holder(protocol.Protocol):
    """Server side: keeps a duplicate descriptor (the 'worker'), then lets go its own."""

    def __init__(self, how: str, ready: Deferred[Any]) -> None:
        self.how = how
        self.ready = ready
        self.lost: Any = None

    def connectionMade(self) -> None:
        duplicate = os.dup(self.transport.getHandle().fileno())  # type: ignore[union-attr]
        if self.how == "detach":
            detach(self.transport)
        elif self.how == "lose":
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.transport.abortConnection()  # type: ignore[union-attr]
        self.ready.callback(duplicate)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class DetachTests(TestCase):
    timeout = 10

    async def exchange(self, how: str) -> tuple[bytes, bytes, Any]:
        ready: Deferred[int] = Deferred()
        holders: list[Holder] = []

        def build(addr: Any) -> Holder:
            holders.append(Holder(how, ready))
            return holders[-1]

        factory = protocol.Factory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        worker = socket.socket(fileno=await ready)
        await deferLater(reactor, 0.05, lambda: None)  # let Twisted finish closing its side
        worker.setblocking(True)
        worker.settimeout(2)
        client.settimeout(2)
        try:
            worker.sendall(b"from worker")
            to_client = client.recv(100)
        except OSError:
            to_client = b"<error>"
        try:
            client.sendall(b"from client")
            to_worker = worker.recv(100)
        except OSError:
            to_worker = b"<error>"
        worker.close()
        try:
            end = b"eof" if client.recv(100) == b"" else b"data"
        except ConnectionResetError:
            end = b"reset"
        return to_client, to_worker + b"|" + end, holders[0].lost

    async def test_detach_keeps_the_connection_for_the_other_holder(self) -> None:
        to_client, to_worker, lost = await self.exchange("detach")
        self.assertEqual((to_client, to_worker), (b"from worker", b"from client|eof"))
        self.assertTrue(lost.check(ConnectionDone))

    async def test_lose_connection_would_kill_it(self) -> None:
        """Why detach exists: loseConnection shuts the shared socket down."""
        to_client, to_worker, _ = await self.exchange("lose")
        self.assertNotEqual((to_client, to_worker), (b"from worker", b"from client|eof"))

    async def test_abort_connection_would_taint_it(self) -> None:
        """abortConnection sets SO_LINGER 0 on the shared socket: the worker's close sends RST."""
        _, to_worker, _ = await self.exchange("abort")
        self.assertEqual(to_worker, b"from client|reset")


class Unsent:
    """A transport-ish object with a socket and unsent bytes."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.dataBuffer = b"pending"

    def getHandle(self) -> socket.socket:
        return self.socket


class FactsTests(SynchronousTestCase):
    def test_detach_refuses_unsent_bytes_and_wrapped_transports(self) -> None:
        transport = Unsent()
        self.addCleanup(transport.socket.close)
        self.assertRaises(DetachError, detach, transport)
        self.assertRaises(DetachError, socket_of, object())

    def test_preamble_and_peer_facts(self) -> None:
        preamble = Preamble("tls", sni="a.example", alpn=("h2", "http/1.1"))
        self.assertEqual(
            preamble_facts(preamble),
            {"protocol": "tls", "consumed": 0, "sni": "a.example", "alpn": ["h2", "http/1.1"]},
        )
        self.assertEqual(
            peer_facts(IPv4Address("TCP", "127.64.2.1", 4242)),
            {"type": "TCP", "host": "127.64.2.1", "port": 4242},
        )
        self.assertEqual(accept_bytes(Preamble("tcpmux", service="x")), b"+\r\n")
        self.assertEqual(accept_bytes(Preamble("http")), b"")
        self.assertEqual(base64.b64decode(base64.b64encode(b"")), b"")
