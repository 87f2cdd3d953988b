# -*- test-case-name: tests.targets.test_splice -*-
"""Kernel-side copying for an established plain proxied pair: splice(2) through a pipe per way.

Once the proxy has moved ``splice_after`` bytes in reads of at least ``BULK_READ``
bytes on a connection whose two ends
are plain TCP sockets (no TLS, no PROXY header still owed, nothing buffered),
``take_over`` stops both Twisted transports reading and moves the bytes with
``os.splice``: socket → pipe → socket, never through Python.  Per socket one
small descriptor is registered with the reactor: read readiness pumps the way
out of that socket, write readiness drains the pipe into it.  A way reads its
source only while its pipe has room (the pipe is the whole buffer, so a slow
reader stops the writer exactly as TCP backpressure does); an EOF is passed on
as ``shutdown(SHUT_WR)`` once the pipe is empty; when both ways ended, or one
socket fails, both transports are closed through Twisted so the proxy's legs
and the multiplexer's counters see an ordinary close.  Where splice(2) or
pipes are unavailable nothing changes: the proxy keeps copying in Python.
"""

from __future__ import annotations

import os
import socket
import sys
from errno import EAGAIN
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from portmux import _twisted

log = Logger(namespace="portmux")

AVAILABLE: bool = hasattr(os, "splice") and sys.platform.startswith("linux")
"""Whether this Python and kernel have splice(2) (Linux, Python ≥ 3.10)."""

SPLICE_AFTER = 256 * 1024
"""Bytes of bulk reads a connection moves in Python (either way) before it is handed to the kernel."""

BULK_READ = 8192
"""Only reads at least this big count towards SPLICE_AFTER (as HAProxy's splice-auto waits for
full buffers): request/response and interactive traffic of small messages never splices,
where a pipe per direction would cost more than it saves."""

NEVER = sys.maxsize
"""The budget of a pair that never splices."""

RETRY_AFTER = 64 * 1024
"""Budget given back when a take-over had to wait (a sink still buffering)."""

PIPE_SIZE = 1024 * 1024
"""Requested capacity of each pipe (F_SETPIPE_SZ; the kernel may cap it lower)."""

HIGH_WATER = PIPE_SIZE // 2
"""A way stops reading its source while its pipe holds this much (it resumes as it drains)."""

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def budget(
    reactor: Any, plain: bool, splice_after: int | None, fd_reactor: bool | None = None,
) -> int:
    """Bytes to copy in Python before trying ``take_over``; ``NEVER`` for pairs that cannot splice.

    ``plain``: both transports are plain sockets (``_twisted.plain_socket``);
    ``fd_reactor``: whether ``reactor`` provides IReactorFDSet, if the caller knows.
    """
    if not plain or splice_after is None or not AVAILABLE:
        return NEVER
    if fd_reactor is None:
        fd_reactor = IReactorFDSet.providedBy(reactor)
    return splice_after if fd_reactor else NEVER


def take_over(reactor: Any, front: Any, back: Any) -> bool:
    """Hand the established pair (``front``/``back`` proxy legs) to the kernel.

    Returns False, changing nothing, when a side still buffers, is closing or
    half-closed, or pipes cannot be made; the caller keeps copying (and may try
    again later).
    """
    client, server = front.transport, back.transport
    if front.read_done or back.read_done or front.write_done or back.write_done:
        return False
    if not (_twisted.splice_ready(client) and _twisted.splice_ready(server)):
        return False
    try:
        up, down = _Way.make(), _Way.make()
    except OSError as e:
        log.info("splice unavailable, copying in Python: {error}", error=e)
        return False
    if _twisted.unsent_size(server) > up.capacity or _twisted.unsent_size(client) > down.capacity:
        up.close()
        down.close()
        return False
    for transport in (client, server):
        if transport.producer is not None:
            transport.unregisterProducer()
        transport.stopReading()
    # Bytes Twisted still buffers go first, through the pipe towards their socket.
    up.queued = _preload(up, server)
    down.queued = _preload(down, client)
    SplicedPair(reactor, client, server, up, down, front, back).start()
    return True


def _preload(way: _Way, transport: Any) -> int:
    """Move what ``transport`` still buffers into the (empty, big enough) pipe towards it."""
    if not _twisted.unsent_size(transport):
        return 0
    return os.write(way.write_fd, _twisted.take_unsent(transport))


class _Way:
    """One direction: a pipe, the bytes it holds, and whether its source ended."""

    __slots__ = ("capacity", "eof", "queued", "read_fd", "shut", "sink", "source", "write_fd")

    def __init__(self, read_fd: int, write_fd: int, capacity: int = 65536) -> None:
        self.capacity = capacity
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.queued = 0
        self.eof = False
        self.shut = False
        self.source: _End = None  # type: ignore[assignment]
        self.sink: _End = None  # type: ignore[assignment]

    @classmethod
    def make(cls) -> _Way:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        capacity = 65536
        try:
            import fcntl

            capacity = fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError, ImportError):
            pass  # the default 64 KiB pipe works too, with more wake-ups
        return cls(read_fd, write_fd, capacity)

    def flush_to(self, fd: int) -> int:
        """Move what the pipe holds into ``fd`` while it takes it (no waiting); returns the bytes moved.

        For a survivor when the other side broke: what the kernel already read goes on if it can.
        """
        moved = 0
        while self.queued:
            try:
                sent = os.splice(self.read_fd, fd, self.queued, flags=_FLAGS)
            except OSError:
                break
            if not sent:
                break
            self.queued -= sent
            moved += sent
        return moved

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1

    def __del__(self) -> None:
        """Safety net: a pair whose sockets someone else closed still gives its pipes back."""
        self.close()


@implementer(IReadDescriptor, IWriteDescriptor)
class _End:
    """One socket of the pair as the reactor sees it: readable → pump out, writable → drain in."""

    __slots__ = ("fd", "inbound", "leg", "outbound", "pair", "reading", "skt", "transport", "writing")

    def __init__(self, pair: SplicedPair, transport: Any, leg: Any) -> None:
        self.pair = pair
        self.transport = transport
        self.leg = leg  # the proxy leg reading this socket: its read count and timeouts
        self.skt: socket.socket = transport.getHandle()
        self.fd = self.skt.fileno()
        self.outbound: _Way = None  # type: ignore[assignment]  # read from this socket
        self.inbound: _Way = None  # type: ignore[assignment]  # written into this socket
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return int(self.fd)

    def logPrefix(self) -> str:
        return "portmux-splice"

    def doRead(self) -> None:
        self.pair.pump(self.outbound)

    def doWrite(self) -> None:
        self.pair.drain(self.inbound)

    def connectionLost(self, reason: Any) -> None:
        """Only reached when the reactor drops every descriptor (shutdown)."""
        self.pair.finish(failed=self)


class SplicedPair:
    """A client and a backend socket copied both ways by the kernel."""

    def __init__(self, reactor: Any, client: Any, server: Any, up: _Way, down: _Way,
                 front: Any, back: Any) -> None:
        self.reactor = reactor
        self.client = _End(self, client, front)
        self.server = _End(self, server, back)
        self.up, self.down = up, down
        up.source, up.sink = self.client, self.server
        down.source, down.sink = self.server, self.client
        self.client.outbound = self.server.inbound = up
        self.server.outbound = self.client.inbound = down
        self.moved = 0
        self.done = False

    def start(self) -> None:
        for way in (self.up, self.down):
            if way.queued:
                self.drain(way)
            else:
                self._read(way.source, True)

    # -- readiness bookkeeping ------------------------------------------------

    def _read(self, end: _End, on: bool) -> None:
        if end.reading is not on and not self.done:
            end.reading = on
            (self.reactor.addReader if on else self.reactor.removeReader)(end)

    def _write(self, end: _End, on: bool) -> None:
        if end.writing is not on and not self.done:
            end.writing = on
            (self.reactor.addWriter if on else self.reactor.removeWriter)(end)

    # -- moving bytes ---------------------------------------------------------

    def pump(self, way: _Way) -> None:
        """The source is readable: move what it has into the pipe, then on to the sink."""
        if self.done or way.eof:
            return
        try:
            got = os.splice(way.source.fd, way.write_fd, PIPE_SIZE - way.queued, flags=_FLAGS)
        except OSError as e:
            if e.errno != EAGAIN:
                self.finish(failed=way.source)
            elif way.queued:  # the pipe is full: wait for the sink to take some
                self._read(way.source, False)
            return
        leg = way.source.leg
        leg.reads += 1  # activity, for the pair's idle timeouts (proxy_timeouts.PairWatch)
        if not got:
            way.eof = True
            self._read(way.source, False)
            leg.read_done = True
            if leg.watch is not None:
                leg.watch.half_closed()
            if not way.queued:
                self._shut(way)
            return
        way.queued += got
        self.drain(way)

    def drain(self, way: _Way) -> None:
        """Move the pipe's bytes into the sink; the source is read while the pipe has room."""
        if self.done:
            return
        queued = way.queued
        while queued:
            try:
                sent = os.splice(way.read_fd, way.sink.fd, queued, flags=_FLAGS)
            except OSError as e:
                if e.errno == EAGAIN:
                    break
                self.finish(failed=way.sink)
                return
            if not sent:
                break
            queued -= sent
            self.moved += sent
        way.queued = queued
        if queued:
            self._write(way.sink, True)
            self._read(way.source, queued < HIGH_WATER and not way.eof)
            return
        self._write(way.sink, False)
        if way.eof:
            self._shut(way)
        else:
            self._read(way.source, True)

    def _shut(self, way: _Way) -> None:
        """The source ended and the pipe is empty: pass the FIN on (half-close)."""
        if way.shut:
            return
        way.shut = True
        try:
            way.sink.skt.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self.up.shut and self.down.shut:
            self.finish()

    # -- the end --------------------------------------------------------------

    def finish(self, failed: _End | None = None) -> None:
        """Both ways ended (or ``failed`` broke): give both sockets back to Twisted to close.

        The surviving side of a failure gets what its pipe still holds, if it
        takes it now, then an orderly close; the failed side is aborted.
        """
        if self.done:
            return
        if failed is not None:
            survivor = self.server if failed is self.client else self.client
            survivor.inbound.flush_to(survivor.fd)
        for end in (self.client, self.server):
            if end.reading:
                self.reactor.removeReader(end)
            if end.writing:
                self.reactor.removeWriter(end)
            end.reading = end.writing = False
        self.done = True
        self.up.close()
        self.down.close()
        # A reset passed on as a reset where the proxy does so (raw TCP, see proxy.py).
        passthrough = failed is not None and failed.leg.reset_passthrough
        if failed is None:
            # Both FINs passed: each socket is shut both ways, so the reactor reports a
            # hang-up on it while Twisted closes it (not reading: ConnectionLost, not
            # ConnectionDone). That is no reset to pass on: aborting the other side
            # would drop the bytes its socket still sends.
            self.client.leg.reset_passthrough = self.server.leg.reset_passthrough = False
        for end in (self.client, self.server):
            if end is failed or passthrough:
                end.transport.abortConnection()
            else:
                end.transport.loseConnection()
