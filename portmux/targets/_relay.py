# -*- test-case-name: tests.targets.test_relay -*-
"""The relay: connected plain proxy pairs copied by one epoll of their own, without transports.

Once a proxy route's backend answers and both ends are plain TCP sockets (an
accepted client, a backend dialled by IP; no TLS, no per-request HTTP), the pair
leaves Twisted's transports: the client's socket is detached from its transport
(``_twisted.detach``), the backend's never gets one, and both are registered with
the multiplexer's ``Relay``.  The relay's epoll descriptor is the only thing the
reactor watches for them: when it is readable, one ``poll(0)`` gives every ready
socket and each is served by a few lines of Python (recv, then send to the other
side; what the other side does not take is kept and the source is not read until
it drains: TCP's own backpressure).  That costs a fraction of a transport per
connection and of a reactor dispatch per read (docs/performance.md).

Semantics are the proxy's (targets/proxy.py): an EOF is passed on as
``shutdown(SHUT_WR)`` once what is owed is sent; a reset from a side whose
``reset_passthrough`` is set resets the other side, otherwise the other side gets
what it is owed and an orderly close; [timeouts] are watched by the same
``PairWatch``; after ``splice_after`` bytes of bulk reads a pair moves its bytes
with splice(2) through a pipe per direction.  The client's transport lets go of
its socket, protocol and accounting watch (``_twisted.detach``) and is freed; at
the end the relay reads TCP_INFO through the watch, closes the socket and calls
the protocol's ``connectionLost``, so the sniffer, counters and the access log
see an ordinary close.
"""

from __future__ import annotations

import os
import select
import socket
from errno import EAGAIN, EWOULDBLOCK
from typing import Any

from twisted.logger import Logger

from portmux import _twisted
from portmux.targets import _splice
from portmux.targets.proxy_timeouts import PairWatch

log = Logger(namespace="portmux")

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_TROUBLE = select.EPOLLHUP | select.EPOLLERR
READ_SIZE = 65536
"""Bytes read per recv_into(2) (Twisted's own transport reads as much), into the relay's one buffer."""
BATCH = 256
"""Most ready sockets served per reactor wake-up (the rest on the next one)."""
_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}: close(2) sends a RST
_AGAIN = (EAGAIN, EWOULDBLOCK)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class Relay:
    """One multiplexer's relayed pairs: an epoll of their sockets, read by the reactor as one descriptor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.poller = select.epoll()
        self.sides: dict[int, _Side] = {}
        self.pairs = 0
        self.watched = False
        self.buffer = bytearray(READ_SIZE)
        """The one buffer every read goes into (one reactor thread: one read at a time)."""
        self.view = memoryview(self.buffer)

    @classmethod
    def of(cls, mux: Any) -> Relay:
        """The relay ``mux`` shares among its proxy routes (built on first use)."""
        relay: Relay = mux.shared("portmux.relay", lambda m: cls(m.reactor))
        return relay

    # -- IReadDescriptor ---------------------------------------------------------

    def fileno(self) -> int:
        return self.poller.fileno()

    def logPrefix(self) -> str:
        return "portmux-relay"

    def doRead(self) -> None:
        """Serve every socket that is ready (at most BATCH per wake-up)."""
        sides = self.sides
        for fd, events in self.poller.poll(0, BATCH):
            side = sides.get(fd)
            if side is None:
                continue
            try:
                if side.writing and events & (_OUT | _TROUBLE):
                    side.flush()
                    if fd not in sides:
                        continue
                if side.reading:
                    if events & (_IN | _TROUBLE):
                        side.other.take_from(side)
                elif events & _TROUBLE and not side.writing:
                    side.park()
            except Exception:  # noqa: BLE001  # one pair's bug must not end the others
                log.failure("relay: closing a pair after an error")
                pair = side.pair
                for end in (pair.client, pair.server):
                    if end is not None:
                        pair.close_side(end, abort=True)

    def connectionLost(self, reason: Any) -> None:
        """The reactor is stopping (or dropped us): reset every pair still open."""
        self.watched = False
        for side in list(self.sides.values()):
            side.pair.close_side(side, abort=True)

    # -- registration ------------------------------------------------------------

    def add(self, side: _Side) -> None:
        self.sides[side.fd] = side
        side.registered = True
        self.poller.register(side.fd, side.mask())

    def remove(self, side: _Side) -> None:
        """Forget a side whose socket is about to be closed (close(2) takes it out of the epoll:
        nothing else holds these sockets' descriptions, so no unregister call is needed)."""
        self.sides.pop(side.fd, None)
        side.registered = False

    def opened(self) -> None:
        self.pairs += 1
        if not self.watched:
            self.watched = True
            self.reactor.addReader(self)

    def closed(self) -> None:
        self.pairs -= 1
        if self.pairs == 0 and self.watched:
            self.watched = False
            self.reactor.removeReader(self)


class _Side:
    """One socket of a relayed pair: what is owed to it, and whether each direction is open.

    It also stands in for the side's transport where PairWatch expects one (``write``,
    ``loseConnection``, ``abortConnection``), and for the proxy leg PairWatch counts
    reads on (``reads``, ``read_done``, ``reset_passthrough``).
    """

    __slots__ = (
        "budget", "closing", "connected", "fd", "other", "owed", "pair", "pipe", "read_done",
        "reading", "reads", "registered", "reset_passthrough", "shut", "skt", "writing",
    )

    def __init__(self, pair: RelayPair, skt: socket.socket) -> None:
        self.pair = pair
        self.skt = skt
        self.fd = skt.fileno()
        self.other: _Side = self
        self.owed = b""  # bytes for this socket it did not take yet
        self.reading = True  # its readiness to read is watched
        self.writing = False  # its readiness to write is watched (something is owed)
        self.registered = False
        self.read_done = False  # its EOF was read
        self.shut = False  # our FIN went to it
        self.closing = False  # close once what is owed is sent
        self.reads = 0
        self.reset_passthrough = False
        self.budget = _splice.NEVER
        self.pipe: _splice._Way | None = None  # splicing: the pipe of bytes read from here
        self.connected = True

    @property
    def transport(self) -> _Side | None:
        """What PairWatch closes or answers through: this side, while its socket is open."""
        return self if self.connected else None

    # -- readiness ---------------------------------------------------------------

    def mask(self) -> int:
        return (_IN if self.reading else 0) | (_OUT if self.writing else 0)

    def read(self, on: bool) -> None:
        if self.reading is not on:
            self.reading = on
            self._update()

    def wait_writable(self, on: bool) -> None:
        if self.writing is not on:
            self.writing = on
            self._update()

    def _update(self) -> None:
        if not self.connected:
            return
        if self.registered:
            self.pair.relay.poller.modify(self.fd, self.mask())
        elif self.reading or self.writing:  # parked: back in the set
            self.registered = True
            self.pair.relay.poller.register(self.fd, self.mask())

    def park(self) -> None:
        """A hang-up while neither reading nor writing: leave the set until wanted (no busy loop)."""
        if self.registered:
            self.registered = False
            try:
                self.pair.relay.poller.unregister(self.fd)
            except OSError:
                pass

    # -- moving bytes --------------------------------------------------------------

    def take_from(self, source: _Side) -> None:
        """``source`` is readable: read what it has and send it on to this side."""
        if source.pipe is not None:
            self.splice_from(source)
            return
        relay = self.pair.relay
        try:
            size = source.skt.recv_into(relay.buffer)
        except OSError as e:
            if e.errno not in _AGAIN:
                source.pair.fail(source)
            return
        source.reads += 1
        if not size:
            source.ended()
            return
        data = relay.view[:size]  # the relay's one read buffer: no allocation per read
        if self.owed or not self.connected:  # a timeout's answer queued, or closing: keep order
            if self.connected and not self.closing:
                self.owed += data
                source.read(False)
                self.wait_writable(True)
            return
        try:
            sent = self.skt.send(data)
        except OSError as e:
            if e.errno not in _AGAIN:
                self.pair.fail(self)
                return
            sent = 0
        if sent < size:
            self.owed = bytes(data[sent:])  # only what the sink did not take is copied
            source.read(False)
            self.wait_writable(True)
        if size >= _splice.BULK_READ:
            source.budget -= size
            if source.budget < 0:
                source.pair.splice()

    def flush(self) -> None:
        """Send what is owed; when it is all gone, read the source again (or pass its EOF on)."""
        source = self.other
        if source.pipe is not None and source.pipe.queued:
            self.drain_pipe(source)
            return
        owed = self.owed
        if owed:
            try:
                sent = self.skt.send(owed)
            except OSError as e:
                if e.errno not in _AGAIN:
                    self.pair.fail(self)
                else:
                    self.wait_writable(True)
                return
            if sent < len(owed):
                self.owed = owed[sent:]
                self.wait_writable(True)
                return
            self.owed = b""
        self.drained()

    def drained(self) -> None:
        """Nothing is owed to this side any more: resume its source, or pass on its EOF."""
        self.wait_writable(False)
        if self.closing:
            self.pair.close_side(self)
            return
        source = self.other
        if source.read_done:
            self.shut_write()
        elif source.connected:
            source.read(True)

    def ended(self) -> None:
        """This side's EOF was read: stop reading it; pass the FIN on once the other side is owed nothing."""
        self.read_done = True
        pair = self.pair
        if self is pair.client and pair.accounting is not None:
            pair.accounting.socket_eof(not self.shut)  # who closed first, for the access log
        other = self.other
        waits = other.closing or other.owed or (self.pipe is not None and self.pipe.queued)
        if not waits and other.read_done and self.shut and not self.owed:
            # The last way ended with nothing owed: close(2) both, which sends the one
            # FIN still owed: no shutdown(2), no epoll change, no new timeout phase.
            other.shut = True
            pair.finish()
            return
        self.read(False)
        if pair.watch is not None:
            pair.watch.half_closed()  # client_fin/server_fin from now on, as the legs do
        if not waits:  # else the FIN goes on once the other side took what it is owed
            other.shut_write()

    def shut_write(self) -> None:
        """Send our FIN to this side; the pair ends when both ways are shut."""
        if self.shut or not self.connected:
            return
        self.shut = True
        try:
            self.skt.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        pair = self.pair
        if pair.client.shut and pair.server.shut:
            pair.finish()

    # -- splice(2) --------------------------------------------------------------------

    def splice_from(self, source: _Side) -> None:
        """Splicing: move what ``source`` has into its pipe, then on into this side."""
        way = source.pipe
        assert way is not None
        try:
            got = os.splice(source.fd, way.write_fd, _splice.PIPE_SIZE - way.queued, flags=_SPLICE_FLAGS)
        except OSError as e:
            if e.errno not in _AGAIN:
                source.pair.fail(source)
            elif way.queued:
                source.read(False)  # the pipe is full: wait for this side to take some
            return
        source.reads += 1
        if not got:
            source.ended()
            return
        way.queued += got
        self.drain_pipe(source)

    def drain_pipe(self, source: _Side) -> None:
        """Move what ``source``'s pipe holds into this side; read the source while the pipe has room."""
        way = source.pipe
        assert way is not None
        queued = way.queued
        while queued:
            try:
                sent = os.splice(way.read_fd, self.fd, queued, flags=_SPLICE_FLAGS)
            except OSError as e:
                if e.errno in _AGAIN:
                    break
                way.queued = queued
                self.pair.fail(self)
                return
            if not sent:
                break
            queued -= sent
            self.pair.spliced += sent
        way.queued = queued
        if queued:
            self.wait_writable(True)
            if not source.read_done:
                source.read(queued < _splice.HIGH_WATER)
            return
        self.drained()

    # -- what PairWatch calls (the transport's part) ----------------------------------

    def write(self, data: bytes) -> None:
        """Owe ``data`` to this side (a timeout's refusal); sent when it is writable."""
        if self.connected and not self.shut:
            self.owed += data
            self.wait_writable(True)

    def loseConnection(self) -> None:
        """Stop reading this side and close it once what it is owed is sent."""
        if not self.connected or self.closing:
            return
        self.closing = True
        self.read(False)
        if self.owed or (self.other.pipe is not None and self.other.pipe.queued):
            self.flush()
        else:
            self.pair.close_side(self)

    def abortConnection(self) -> None:
        """Reset this side now, as if its peer had (a timeout): resets pass on as the proxy's do."""
        self.pair.fail(self)


class RelayPair:
    """A client and a backend socket copied both ways by the relay."""

    __slots__ = ("accounting", "client", "closed_sides", "protocol", "relay", "server", "spliced", "watch")

    def __init__(self, relay: Relay, protocol: Any, accounting: Any) -> None:
        self.relay = relay
        self.protocol: Any = protocol  # the client connection's protocol (its sniffer): told of the end
        self.accounting: Any = accounting  # its SocketWatch: TCP_INFO at close, who closed first
        self.client: _Side = None  # type: ignore[assignment]
        self.server: _Side = None  # type: ignore[assignment]
        self.watch: PairWatch | None = None
        self.closed_sides = 0
        self.spliced = 0  # bytes splice(2) moved (both ways)

    def start(
        self, client: socket.socket, server: socket.socket, to_client: bytes, to_server: bytes,
        budget: int = _splice.NEVER, server_resets_pass: bool = True,
    ) -> None:
        """Send what is owed first (a header, bytes read while sniffing), then register both sockets."""
        relay = self.relay
        self.client = _Side(self, client)
        self.server = _Side(self, server)
        self.client.other, self.server.other = self.server, self.client
        self.client.budget = self.server.budget = budget
        self.client.reset_passthrough = True
        self.server.reset_passthrough = server_resets_pass
        relay.opened()
        for side, data in ((self.server, to_server), (self.client, to_client)):
            if data:  # usually taken at once: then no epoll change follows
                try:
                    sent = side.skt.send(data)
                except OSError as e:
                    if e.errno not in _AGAIN:
                        relay.add(self.client)
                        relay.add(self.server)
                        self.fail(side)
                        return
                    sent = 0
                if sent < len(data):
                    side.owed = data[sent:]
                    side.writing = True
                    side.other.reading = False
        relay.add(self.client)
        relay.add(self.server)

    # -- splice(2) ----------------------------------------------------------------------

    def splice(self) -> None:
        """Enough bulk went through Python: move bytes with splice(2) from now on (both ways)."""
        client, server = self.client, self.server
        client.budget = server.budget = _splice.NEVER
        if client.owed or server.owed or client.read_done or server.read_done:
            client.budget = server.budget = _splice.RETRY_AFTER
            return
        try:
            up, down = _splice._Way.make(), _splice._Way.make()
        except OSError as e:
            log.info("splice unavailable, copying in Python: {error}", error=e)
            return
        client.pipe, server.pipe = up, down

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> None:
        """Both ways are shut: close both sockets in order."""
        self.close_side(self.server)
        self.close_side(self.client)

    def fail(self, side: _Side) -> None:
        """``side`` broke or was reset: close it at once, and end the other side the proxy's way.

        The other side is reset too when ``side`` passes resets on (raw TCP); otherwise
        it gets what it is owed and an orderly close (an HTTP client).
        """
        if not side.connected:
            return
        other = side.other
        if side.pipe is not None and side.pipe.queued and other.connected:
            self.spliced += side.pipe.flush_to(other.fd)  # what the kernel already read from ``side``
        self.close_side(side, abort=True)
        if not other.connected:
            return
        if side.reset_passthrough:
            self.close_side(other, abort=True)
        else:
            other.loseConnection()

    def close_side(self, side: _Side, abort: bool = False) -> None:
        """Close one socket and forget it; the client's end is told to its protocol (the sniffer)."""
        if not side.connected:
            return
        side.connected = False
        self.relay.remove(side)
        pipe, side.pipe = side.pipe, None
        if pipe is not None:
            pipe.close()
        skt = side.skt
        protocol = None
        if side is self.client:
            self._stop_watch()
            protocol, self.protocol = self.protocol, None
            accounting, self.accounting = self.accounting, None
            if accounting is not None:
                accounting.socket_closing(skt)
        if abort:
            try:
                skt.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        skt.close()
        if protocol is not None:  # the sniffer: counters, accounting, the access log
            protocol.connectionLost(_twisted.LOST if abort else _twisted.DONE)
        self.closed_sides += 1
        if self.closed_sides == 2:
            self._stop_watch()
            # No cycle left for the collector: pair -> sides -> pair, side <-> side.
            self.client.other = self.server.other = None  # type: ignore[assignment]
            self.client = self.server = None  # type: ignore[assignment]
            self.relay.closed()

    def _stop_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.stop()


def relay_pair(
    mux: Any, transport: Any, server: socket.socket, to_server: bytes, budget: int,
    server_resets_pass: bool,
) -> RelayPair | None:
    """Hand a connected client transport and backend socket to ``mux``'s relay; None if it cannot.

    ``budget``: bulk bytes to copy before splicing (``_splice.budget``);
    ``server_resets_pass``: a backend's reset resets the client (raw TCP; a client's
    reset always resets the backend).  Nothing changes when the client's transport
    is not a plain, idle, open socket.
    """
    detached = _twisted.detach(transport)
    if detached is None:
        return None
    client, to_client, protocol, accounting = detached
    pair = RelayPair(Relay.of(mux), protocol, accounting)
    pair.start(client, server, to_client, to_server, budget, server_resets_pass)
    return pair


def _discard(data: bytes) -> None:
    """Reads of a relayed connection's transport: none arrive (it no longer reads)."""


class Relayed:
    """What a relayed connection's sniffer holds as its target: nothing per connection.

    The relay owns the sockets; the sniffer only hears the end (``connectionLost``).
    """

    __slots__ = ()

    dataReceived = staticmethod(_discard)

    def connectionLost(self, reason: Any = None) -> None:
        """The relay told the sniffer of the end itself: nothing left to do here."""


RELAYED = Relayed()
"""The one stateless stand-in every relayed connection's sniffer shares."""
