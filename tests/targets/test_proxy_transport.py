"""The proxy's own backend transport (portmux._twisted.OutgoingConnection): reads, EOF, half-close.

It exists only with the fast paths on, so these tests skip under PORTMUX_NO_FAST_PATHS.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from typing import Any

from twisted.internet import main
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from portmux import _twisted
from portmux._twisted import OutgoingConnection as _Outgoing


@implementer(IHalfCloseableProtocol)
class Recorder:
    """A half-closeable protocol stand-in that records what the transport tells it."""

    def __init__(self, pause_on_data: bool = False) -> None:
        self.data: list[bytes] = []
        self.events: list[str] = []
        self.pause_on_data = pause_on_data
        self.transport: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)
        if self.pause_on_data:
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        self.events.append("read-lost")

    def writeConnectionLost(self) -> None:
        self.events.append("write-lost")

    def connectionLost(self, reason: object) -> None:
        self.events.append("lost")


def wait_state(skt: socket.socket, state: int, limit: float = 5.0) -> None:
    """Wait until the kernel reports TCP state ``state`` for ``skt`` (Linux TCP_INFO)."""
    end = time.monotonic() + limit
    while skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != state:
        if time.monotonic() > end:
            raise AssertionError(f"socket never reached TCP state {state}")
        time.sleep(0.005)


def wait_readable(skt: socket.socket, limit: float = 5.0) -> None:
    """Wait until ``skt`` has data or an EOF queued."""
    readable, _, _ = select.select([skt], [], [], limit)
    if not readable:
        raise AssertionError("socket never became readable")


class OutgoingReadTests(SynchronousTestCase):
    """doRead delivers data, and an EOF queued right behind it in the same call."""

    if not _twisted.FAST_PATHS:
        skip = "the fast paths are off: portmux never builds this transport"

    def setUp(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.ours = socket.create_connection(listener.getsockname())
        self.ours.setblocking(False)
        self.peer, _ = listener.accept()
        listener.close()
        self.addCleanup(self.peer.close)
        self.recorder = Recorder()
        self.transport = _Outgoing(self.ours, self.recorder, MemoryReactor(), ("127.0.0.1", 1))
        self.recorder.transport = self.transport
        self.transport.startReading()
        self.addCleanup(self.ours.close)

    def test_data_then_eof_in_one_call(self) -> None:
        """Answer + FIN already queued: one doRead delivers the answer and reports the EOF."""
        if not sys.platform.startswith("linux"):
            self.skipTest("the early-EOF check uses Linux TCP_INFO")
        self.peer.sendall(b"answer")
        self.peer.shutdown(socket.SHUT_WR)
        wait_state(self.ours, 8)  # TCP_CLOSE_WAIT: the FIN is here
        self.assertIs(self.transport.doRead(), main.CONNECTION_DONE)
        self.assertEqual(self.recorder.data, [b"answer"])

    def test_data_without_eof(self) -> None:
        """No FIN yet: the data is delivered and the connection stays open."""
        self.peer.sendall(b"part")
        wait_readable(self.ours)
        self.assertIsNone(self.transport.doRead())
        self.assertEqual(self.recorder.data, [b"part"])
        self.assertIsNone(self.transport.doRead())  # nothing more: EAGAIN is not an error

    def test_paused_reader_is_not_read_again(self) -> None:
        """A protocol that pauses in dataReceived gets no second read (no EOF behind its back)."""
        self.recorder.pause_on_data = True
        self.peer.sendall(b"answer")
        self.peer.shutdown(socket.SHUT_WR)
        if sys.platform.startswith("linux"):
            wait_state(self.ours, 8)
        else:
            wait_readable(self.ours)
        self.assertIsNone(self.transport.doRead())
        self.assertEqual(self.recorder.data, [b"answer"])
        self.transport.resumeProducing()
        self.assertIs(self.transport.doRead(), main.CONNECTION_DONE)

    def test_eof_alone(self) -> None:
        self.peer.shutdown(socket.SHUT_WR)
        wait_readable(self.ours)
        self.assertIs(self.transport.doRead(), main.CONNECTION_DONE)
        self.assertEqual(self.recorder.data, [])

    def test_half_close_tells_the_leg(self) -> None:
        """A half-close shuts our write side (the peer sees EOF) and tells the leg."""
        self.transport._closeWriteConnection()
        self.assertEqual(self.recorder.events, ["write-lost"])
        self.peer.settimeout(5)
        self.assertEqual(self.peer.recv(10), b"")  # the peer sees our FIN

    def test_read_connection_lost_goes_to_the_leg(self) -> None:
        self.transport.readConnectionLost(_twisted.DONE)
        self.assertEqual(self.recorder.events, ["read-lost"])
