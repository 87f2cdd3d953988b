# -*- test-case-name: tests.test_testing -*-
"""Helpers for testing code built on portmux, in memory: no sockets, no real reactor.

``feed_mux`` runs bytes through a Multiplexer and says which route and preamble
won and what was written back; ``RecordingTarget`` records what a route receives;
the probe assertions check a probe gives one verdict however the bytes are split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux.core.interfaces import ITarget
from portmux.core.mux import Classified, Multiplexer, SniffingProtocol
from portmux.core.preamble import NEED_MORE, Preamble, ProbeResult
from portmux.core.routing import Route

PEER = cast(IAddress, IPv4Address("TCP", "127.0.0.1", 40000))
"""The client address ``feed_mux`` uses unless told otherwise."""

ProbeLike = Callable[[bytes], ProbeResult] | Any
"""A probe function, or an IProbe (its ``probe`` method is used)."""


class Fed:
    """One in-memory connection through a Multiplexer: what was chosen, what came back."""

    def __init__(
        self, mux: Multiplexer, protocol: SniffingProtocol, transport: StringTransport
    ) -> None:
        self.mux = mux
        self.protocol = protocol
        self.transport = transport

    @property
    def route(self) -> Route | None:
        """The route the connection was attached to (None while sniffing or if refused)."""
        return self.protocol.route

    @property
    def preamble(self) -> Preamble | None:
        """What classification found, attached or refused (None while still sniffing)."""
        return self.protocol.preamble

    @property
    def written(self) -> bytes:
        """Everything written to the client: a refusal, a TCPMUX ``+``, a target's reply."""
        return bytes(self.transport.value())

    @property
    def closed(self) -> bool:
        """True once portmux or the target asked to close the client connection."""
        return bool(self.transport.disconnecting)

    def send(self, data: bytes) -> Fed:
        """Deliver more bytes from the client."""
        self.protocol.dataReceived(data)
        return self

    def close(self) -> None:
        """The client goes away: the target (or the sniffer) sees connectionLost."""
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def advance(self, seconds: float) -> Fed:
        """Move the multiplexer's clock (needs a MemoryReactorClock), firing deadlines."""
        self.mux.reactor.advance(seconds)
        return self


def feed_mux(
    mux: Multiplexer | Iterable[Route], *chunks: bytes, peer: IAddress = PEER
) -> Fed:
    """Connect a client to ``mux`` (or a new one over ``routes``) in memory and send ``chunks``.

    A new multiplexer gets a MemoryReactorClock and is started; each chunk is one read.
    """
    if not isinstance(mux, Multiplexer):
        mux = Multiplexer(MemoryReactorClock(), mux)
        mux.startFactory()
    protocol = mux.buildProtocol(peer)
    if protocol is None:
        raise ValueError(f"the multiplexer's limits refused a connection from {peer}")
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    return Fed(mux, protocol, transport)


class RecordingProtocol(Protocol):
    """Records the bytes and the loss of one connection."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.reason = reason


@implementer(ITarget)
class RecordingTarget:
    """A target that records each attached connection and every byte it receives.

    ``accept`` (a string) makes it send the protocol's positive answer first, as a
    real service would (TCPMUX ``+accept``).
    """

    kind = "recording"
    description = "records connections"

    def __init__(self, accept: str | None = None) -> None:
        self.accept = accept
        self.connections: list[Classified] = []
        self.protocols: list[RecordingProtocol] = []
        self.started = 0
        self.stopped = 0

    @property
    def received(self) -> bytes:
        """All bytes received by every connection, in attach order."""
        return b"".join(protocol.data for protocol in self.protocols)

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1

    def attach(self, connection: Classified) -> RecordingProtocol:  # type: ignore[override]
        self.connections.append(connection)
        if self.accept is not None:
            connection.accept(self.accept)
        protocol = RecordingProtocol()
        protocol.makeConnection(connection.transport)  # type: ignore[no-untyped-call]
        protocol.dataReceived(connection.payload)
        self.protocols.append(protocol)
        return protocol


# -- probes ----------------------------------------------------------------------


def _function(probe: ProbeLike) -> Callable[[bytes], ProbeResult]:
    method = getattr(probe, "probe", None)
    return method if callable(method) else probe


def probe_in_chunks(probe: ProbeLike, chunks: Iterable[bytes]) -> ProbeResult:
    """Grow a buffer chunk by chunk, as the multiplexer does; stop at the first decision."""
    function = _function(probe)
    buffer = b""
    result: ProbeResult = NEED_MORE
    for chunk in chunks:
        buffer += chunk
        result = function(buffer)
        if result is not NEED_MORE:
            return result
    return result


def assert_probe_prefixes(probe: ProbeLike, data: bytes, step: int = 1) -> int | None:
    """Every prefix of ``data`` is NEED_MORE until the decision, then the final verdict.

    Return the length of the shortest decided prefix (None if never decided).
    """
    function = _function(probe)
    final = function(data)
    decided: int | None = None
    for n in [*range(0, len(data), step), len(data)]:
        result = function(data[:n])
        if decided is None:
            if result is NEED_MORE:
                continue
            decided = n
        assert result == final, f"prefix of {n} bytes gave {result!r}, whole gave {final!r}"
    assert decided is not None or final is NEED_MORE
    return decided


_WHOLE: Any = object()


def assert_probe_verdict_for_every_split(
    probe: ProbeLike, data: bytes, expected: Any = _WHOLE, *, step: int = 1
) -> None:
    """``data`` read in two parts split at every offset, and one byte per read, gives
    ``expected`` (by default, the verdict on the whole of ``data``)."""
    if expected is _WHOLE:
        expected = _function(probe)(data)
    offsets: Sequence[int] = [*range(0, len(data), step), len(data)]
    for i in offsets:
        got = probe_in_chunks(probe, [data[:i], data[i:]])
        assert got == expected, f"split at {i} gave {got!r}, expected {expected!r}"
    got = probe_in_chunks(probe, (data[i : i + 1] for i in range(len(data))))
    assert got == expected, f"one byte per read gave {got!r}, expected {expected!r}"
