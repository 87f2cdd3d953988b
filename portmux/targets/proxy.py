# -*- test-case-name: tests.client.test_ssh,tests.protocols.test_nmf_routing,tests.targets.test_proxy,tests.targets.test_proxy_transport -*-
"""Proxy a classified connection byte-for-byte to one of several backends.

Per connection: dial the next backend round-robin (failing over to the others
once each), send an optional PROXY header, the bytes already read, then copy
both ways with crosswise streaming producers and half-close.  ``tcp:`` backends
given as IP literals are dialled with our own non-blocking socket wrapped in a
plain TCP transport; other ``tcp:`` and ``unix:`` backends with
``reactor.connectTCP``/``connectUNIX`` and the connection object itself as the
factory (no Deferred, no closure); other endpoints (``tls:``...) through
``IStreamClientEndpoint.connect``.  See docs/performance.md for why the data
path looks the way it does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import replace
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorFDSet,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux import _twisted
from portmux._twisted import OutgoingConnection as _Outgoing
from portmux.core import refusal
from portmux.core.interfaces import ITarget
from portmux.core.limits import Timeouts
from portmux.protocols import nmf, proxyheader
from portmux.targets import _relay, _splice
from portmux.targets.proxy_timeouts import PairWatch, WatchPlan, abort

log = Logger(namespace="portmux")

PROXY_HEADER_VERSIONS = ("v1", "v2")
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux: one ioctl less per dial
PENDING_LIMIT = 65536
"""Bytes read from a client while its backend is dialled before reading pauses."""


class Backend:
    """One backend: its display name and how to dial it."""

    __slots__ = ("address", "endpoint", "family", "name", "tcp", "unix")

    def __init__(self, reactor: Any, spec: str | IStreamClientEndpoint) -> None:
        endpoint: Any = clientFromString(reactor, spec) if isinstance(spec, str) else spec
        self.name = spec if isinstance(spec, str) else _endpoint_name(spec)
        self.endpoint = endpoint
        # Fast paths: (host, port, bindAddress) / path for the reactor's own connectors.
        self.tcp: tuple[str, int, Any] | None = None
        self.unix: str | None = None
        # Fastest path: an IP literal we dial with our own non-blocking socket.
        self.family = socket.AF_INET
        self.address: tuple[str, int] | None = None
        # Both are None without FAST_PATHS: then every backend dials through connect().
        self.tcp = _twisted.tcp_endpoint_parts(endpoint)
        self.unix = _twisted.unix_endpoint_path(endpoint)
        if self.tcp is not None:
            host, port, bind = self.tcp
            if bind is None and IReactorFDSet.providedBy(reactor):
                if isIPAddress(host):
                    self.family, self.address = socket.AF_INET, (host, port)
                elif isIPv6Address(host) and "%" not in host:
                    self.family, self.address = socket.AF_INET6, (host, port)


def _no_delay(transport: Any) -> None:
    """Disable Nagle on a socket transport: a proxy must not delay what the peer sent.

    A client that set TCP_NODELAY itself would otherwise see its small writes held
    back by portmux until the backend ACKs the previous segment.
    """
    try:
        transport.setTcpNoDelay(True)
    except (OSError, AttributeError):
        pass  # UNIX sockets have no Nagle


def _failure(exc: BaseException) -> Failure:
    return Failure(exc)


def _connect_failure(err: int) -> Failure:
    """The Twisted ConnectError subclass for a connect(2) errno, as a Failure."""
    return _failure(error.getConnectError((err, os.strerror(err))))


class _Dialing:
    """A non-blocking connect in progress, watched for writability by the reactor."""

    __slots__ = ("address", "front", "skt")

    def __init__(self, front: _Front, skt: socket.socket, address: tuple[str, int]) -> None:
        self.front: _Front | None = front
        self.skt = skt
        self.address = address

    def fileno(self) -> int:
        return self.skt.fileno()

    def logPrefix(self) -> str:
        return "portmux-proxy-dial"

    def doWrite(self) -> None:
        """Writable: the connect finished, one way or the other."""
        front = self._forget()
        if front is None:
            return
        err = self.skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        front.dialing = None
        if front.timer is not None:
            if front.timer.active():
                front.timer.cancel()
            front.timer = None
        if err:
            self.skt.close()
            front._dial_failed(_connect_failure(err))
        else:
            front.connected_socket(self.skt, self.address, self.skt.family)

    doRead = doWrite

    def connectionLost(self, reason: Failure) -> None:
        """Only reached when the reactor drops us (e.g. on shutdown)."""
        self.cancel()

    def _forget(self) -> _Front | None:
        front, self.front = self.front, None
        if front is not None:
            front.target.reactor.removeWriter(self)
        return front

    def cancel(self) -> None:
        """The client left: stop watching and close the socket."""
        if self._forget() is not None:
            self.skt.close()

    def timed_out(self) -> None:
        """No answer within connect_timeout: give up on this backend."""
        front = self._forget()
        if front is None:
            return
        self.skt.close()
        front.timer = None
        front.dialing = None
        reason = error.TimeoutError(string="connect timed out")
        front._dial_failed(_failure(reason))


_endpoint_name = _twisted.endpoint_label
_send_now = _twisted.send_now
_direct = _twisted.plain_socket


def _shut_write(sink: Any, direct: bool, leg: _Leg | None) -> None:
    """Half-close ``sink``: at once when nothing is buffered, else after the flush.

    Doing at once what FileDescriptor.doWrite would do a reactor turn later
    saves the turn and two epoll_ctl calls per direction; ``leg`` (the proxy
    leg reading ``sink``) is told directly, without the transport's adapter
    lookups through whatever protocol the transport reports to.

    A TLS-wrapped ``sink`` (termination's client side, a ``tls:`` backend) half-closes
    the TLS way: its ``loseConnection`` sends close_notify after what is buffered and
    keeps reading until the peer's close_notify, then sends the FIN.  (Its
    ``loseWriteConnection`` would reach the TCP transport beneath and FIN without
    close_notify.)
    """
    if isinstance(sink, TLSMemoryBIOProtocol):
        sink.loseConnection()
    elif not (direct and _twisted.shut_write_now(sink, leg)):
        sink.loseWriteConnection()


def _close(transport: Any, direct: bool, read_done: bool = False) -> None:
    """``transport.loseConnection()``, cheaper once its write side is shut.

    Then FileDescriptor.loseConnection closes at once with a new Failure
    (walking the exception's MRO) per socket; we do the same with a shared one
    (connectionLost itself stops reading and writing).  ``direct`` says
    ``transport`` is a plain socket transport (see ``_direct``); ``read_done``
    says the peer's FIN was already read: then close(2) alone ends an idle
    socket cleanly (it sends our FIN), so no shutdown(2) first.
    """
    if not (direct and _twisted.close_now(transport, read_done)):
        transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _Leg:
    """One side of a proxied connection; copies what it reads to the other side.

    ``sink`` is the other side's transport; ``direct`` says it is a plain
    socket transport, so a read can go straight to send(2) when its buffer is
    empty instead of through write() + a reactor turn + two epoll_ctl calls.
    """

    __slots__ = (
        "budget", "direct", "other", "read_done", "reads", "reset_passthrough", "sink",
        "transport", "watch", "write_done",
    )

    def __init__(self) -> None:
        self.budget = _splice.NEVER  # bytes to copy here before the kernel takes over
        self.transport: Any = None
        self.sink: Any = None
        self.direct = False
        self.other: _Leg | None = None
        self.read_done = False
        self.write_done = False
        self.reads = 0  # PairWatch's activity count
        self.watch: PairWatch | None = None
        self.reset_passthrough = False  # a reset from this side resets the other side

    def dataReceived(self, data: bytes) -> None:
        self.reads += 1
        sink = self.sink  # after the other side is lost, its dead transport drops writes
        if self.direct:
            size = len(data)
            data = _send_now(sink, data)
            if data:
                if sink.producer is None:  # backpressure can only start now that we buffer
                    sink.registerProducer(self.transport, True)
                sink.write(data)
            if size >= _splice.BULK_READ:  # only bulk reads count: chatty pairs never splice
                self.budget -= size
                if self.budget < 0:
                    self._splice()
            return
        sink.write(data)

    def _splice(self) -> None:
        """Enough bytes went through Python: hand the pair to splice(2) (see _splice)."""
        other = self.other
        if other is None or not _splice.take_over(self.transport.reactor, self, other):
            self.budget = _splice.RETRY_AFTER

    def readConnectionLost(self) -> None:
        """FIN from this side: pass it on, keep the other direction open."""
        if self.read_done:
            return
        self.read_done = True
        sink = self.sink
        if sink is not None:
            if not self.direct or sink.producer is not None:
                sink.unregisterProducer()  # a paused producer would block the shutdown
            other = self.other
            if other is not None and other.read_done and self.direct:
                _close(sink, True, read_done=True)  # both ways over: close(2), no shutdown(2)
            else:
                _shut_write(sink, self.direct, other)
        if self.watch is not None:
            self.watch.half_closed()
        if self.write_done:
            _close(self.transport, self._transport_direct())

    def writeConnectionLost(self) -> None:
        """Our FIN to this side went out; close fully if the other way is done too."""
        self.write_done = True
        if self.read_done:
            _close(self.transport, self._transport_direct())

    def _transport_direct(self) -> bool:
        """Whether our own transport is a plain socket (the other leg knows: it is its sink)."""
        other = self.other
        return other.direct if other is not None else _direct(self.transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """This side is gone: flush what we owe the other side, then close it.

        A reset (not a clean close) is passed on as a reset when
        ``reset_passthrough`` is set, so the peer sees the truncation.
        """
        watch = self.watch
        if watch is not None:
            self.watch = None
            watch.stop()
        sink = self.sink
        if sink is not None:
            if not self.direct or sink.producer is not None:
                sink.unregisterProducer()
            if (self.reset_passthrough and reason is not None
                    and reason.type is not error.ConnectionDone  # the common case: no MRO walk
                    and reason.check(error.ConnectionLost) is not None):
                abort(sink)
            else:
                _close(sink, self.direct)
        other = self.other
        if other is not None:
            self.other = other.other = None  # break the cycle between the legs

    def makeConnection(self, transport: Any) -> None:
        """Connected to a backend (the backend leg only)."""
        self.transport = transport
        front = self.other
        if isinstance(front, _Front):
            front.backend_connected(self)
        else:  # the client left while we were dialling
            transport.loseConnection()

    def connectionMade(self) -> None:
        """Nothing: ``makeConnection`` does the work."""


@implementer(IHalfCloseableProtocol)
class _Front(_Leg):
    """The client leg, and the client factory that dials its backend leg."""

    __slots__ = (
        "attempt",
        "connection",
        "dialing",
        "pending",
        "relayed",
        "start",
        "target",
        "timer",
    )

    def __init__(self, target: ProxyTarget, connection: Any) -> None:
        _Leg.__init__(self)
        self.target = target
        self.connection = connection
        self.transport = connection.transport
        self.pending: list[bytes] | None = None
        self.start = 0
        self.attempt = 0
        self.dialing: Any = None
        self.timer: Any = None
        self.relayed = False  # the relay took the pair (targets/_relay.py)

    # -- before the backend answers ----------------------------------------

    @property
    def dataReceived(self) -> Any:
        """What reads from the client call: held back while dialling, then _Leg's own copy.

        The multiplexer binds this once, when it attaches; a backend that answers
        later rebinds it (``backend_connected``), so a read costs one Python call.
        """
        if self.sink is None:
            return self._held
        return _Leg.dataReceived.__get__(self)

    def _held(self, data: bytes) -> None:
        """Client bytes read while dialling: kept for the backend, in order."""
        if self.sink is None:
            pending = self.pending
            if pending is None:
                pending = self.pending = []
            pending.append(data)
            if sum(map(len, pending)) >= PENDING_LIMIT:
                self.transport.pauseProducing()  # resumed by backend_connected
            return
        _Leg.dataReceived(self, data)

    def readConnectionLost(self) -> None:
        if self.sink is None:
            self.read_done = True  # forwarded once the backend is connected
            return
        _Leg.readConnectionLost(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.sink is None:  # still dialling
            self.connection = None
            self._stop_dialing()
            back = self.other
            self.other = None
            if back is not None:
                back.other = None
                if back.transport is not None:
                    back.transport.loseConnection()
            return
        _Leg.connectionLost(self, reason)

    def dial(self) -> None:
        """Dial the next backend not yet tried for this connection."""
        target = self.target
        backends = target.backends
        backend = backends[(self.start + self.attempt) % len(backends)]
        self.attempt += 1
        attempt = self.attempt
        reactor = target.reactor
        self.connection.dialing(backend.name)
        if backend.address is not None:
            self._dial_socket(backend)
            return
        if backend.tcp is not None:
            host, port, bind = backend.tcp
            dialing = reactor.connectTCP(host, port, self, target.connect_timeout, bind)
        elif backend.unix is not None:
            dialing = reactor.connectUNIX(backend.unix, self, target.connect_timeout)
        else:
            dialing = backend.endpoint.connect(self)
            dialing.addErrback(self._dial_failed)
            if not dialing.called:
                self.timer = reactor.callLater(target.connect_timeout, dialing.cancel)
        if self.attempt == attempt and self.sink is None and self.connection is not None:
            self.dialing = dialing  # still this attempt: not failed or connected already

    def _dial_socket(self, backend: Backend) -> None:
        """Dial an IP literal ourselves: no connector, Deferred or callLater(0).

        A loopback connect usually completes inside connect(2), so the second
        connect_ex says EISCONN and the backend is attached without a reactor turn.
        """
        address = backend.address
        try:
            skt = socket.socket(backend.family, socket.SOCK_STREAM | _NONBLOCK)
            if not _NONBLOCK:
                skt.setblocking(False)
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = skt.connect_ex(address)  # type: ignore[arg-type]
            if err == EINPROGRESS:
                err = skt.connect_ex(address)  # type: ignore[arg-type]
        except OSError as e:
            reason = error.ConnectError(string=str(e))
            self._dial_failed(_failure(reason))
            return
        if err == 0 or err == EISCONN:
            self.connected_socket(skt, address, backend.family)  # type: ignore[arg-type]
        elif err in (EINPROGRESS, EALREADY, EWOULDBLOCK):
            dialing = _Dialing(self, skt, address)  # type: ignore[arg-type]
            self.dialing = dialing
            self.target.reactor.addWriter(dialing)
            self.timer = self.target.reactor.callLater(
                self.target.connect_timeout, dialing.timed_out
            )
        else:
            skt.close()
            self._dial_failed(_connect_failure(err))

    def connected_socket(self, skt: socket.socket, address: tuple[str, int], family: int) -> None:
        """Hand the pair to the relay, or wrap the backend socket as a transport, and start proxying."""
        if self.target.relay and self.target.rewrite_via is not True and self._relay(skt):
            return
        back = self.buildProtocol(None)  # type: ignore[arg-type]
        transport = _Outgoing(skt, back, self.target.reactor, address, family)  # type: ignore[arg-type]
        transport.startReading()
        back.makeConnection(transport)

    def _relay(self, skt: socket.socket) -> bool:
        """A plain client and a backend socket: copy them in the relay (targets/_relay.py).

        False, changing nothing, when the client's transport cannot leave the reactor.
        """
        connection = self.connection
        client = self.transport
        if connection is None or not _twisted.detachable(client):
            return False
        self.timer, timer = None, self.timer
        if timer is not None and timer.active():
            timer.cancel()
        self.dialing = None
        connection.connected()
        connection.accept()
        _no_delay(client)
        data = self._first_bytes(connection, client, None)
        self.connection = None  # drop the cycle through the sniffer
        target = self.target
        preamble = connection.preamble
        http = preamble.protocol == "http"
        budget = _splice.budget(target.reactor, True, target.splice_after, target.fd_reactor)
        # Resets pass on as the legs pass them: from the client always, from the backend
        # only to a raw-TCP client (an HTTP client gets an orderly close).
        pair = _relay.relay_pair(connection.mux, client, skt, data, budget, not http)
        if pair is None:  # detachable said yes: not reached
            skt.close()
            client.abortConnection()
            return True
        self.relayed = True
        side = pair.client
        if side is None:  # the first send already ended the pair
            return True
        sniffer = getattr(connection, "sniffer", None)
        if sniffer is not None:  # a drain's abortConnection reaches the relay, not the reactor
            sniffer.transport = side
        if side.connected and side.other.connected:
            backends = target.backends
            backend = backends[(self.start + self.attempt - 1) % len(backends)]
            pair.watch = PairWatch(target.plan_for(connection.mux), connection.mux.log, side,
                                   side.other, connection.peer, preamble, backend.name, http)
        return True

    def _first_bytes(self, connection: Any, client: Any, server: Any) -> bytes:
        """What the backend gets before the copying starts: header, bytes read while sniffing and dialling."""
        data: bytes = connection.payload
        if self.target.rewrite_via:  # net.tcp: the Via names the backend (docs/config.md)
            data = nmf.rewrite_via(data, self.target.via_address(server))
        version = self.target.proxy_header
        if version is not None:
            data = proxyheader.header(version, connection.peer, client.getHost()) + data
        pending, self.pending = self.pending, None
        if pending:
            data += b"".join(pending)
        connection.buffered = b""
        return data

    def _stop_dialing(self) -> None:
        dialing, self.dialing = self.dialing, None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if dialing is None:
            return
        if hasattr(dialing, "stopConnecting"):
            if getattr(dialing, "state", None) == "connecting":
                dialing.stopConnecting()
        else:
            dialing.cancel()

    def tried(self) -> list[str]:
        """Names of the backends dialled for this connection so far, in order."""
        backends = self.target.backends or self.target.all_backends
        return [backends[(self.start + i) % len(backends)].name for i in range(self.attempt)]

    def _dial_failed(self, reason: Failure) -> None:
        """Try the next backend, or refuse the client once every one failed."""
        self.dialing = None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        connection = self.connection
        if connection is None:
            return  # the client already left
        if self.attempt < len(self.target.backends):
            self.dial()
            return
        why = reason.getErrorMessage() if reason is not None else "failed"
        connection.refuse(
            refusal.BAD_GATEWAY,
            "backend unreachable",
            detail=f"tried {', '.join(self.tried())}; last error: {why}",
        )

    # -- IProtocolFactory, for reactor.connectTCP and endpoints -----------------

    def doStart(self) -> None:
        """No per-connection factory bookkeeping or logging."""

    def doStop(self) -> None:
        """No per-connection factory bookkeeping or logging."""

    def startedConnecting(self, connector: Any) -> None:
        """Nothing to do; the connector is kept in ``dialing``."""

    def buildProtocol(self, addr: IAddress) -> _Leg:
        back = _Leg()
        back.other = self
        self.other = back
        return back

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._dial_failed(reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        """The backend leg's own connectionLost handles this."""

    def logPrefix(self) -> str:
        return "portmux-proxy"

    # -- connected -------------------------------------------------------------

    def _watch(self, connection: Any, back: _Leg) -> None:
        """Start the pair's timeouts; resets pass through except to HTTP clients."""
        preamble = connection.preamble
        http = preamble.protocol == "http"
        back.reset_passthrough = not http
        self.reset_passthrough = True
        target = self.target
        mux = connection.mux
        backends = target.backends
        backend = backends[(self.start + self.attempt - 1) % len(backends)]
        self.watch = back.watch = PairWatch(
            target.plan_for(mux), mux.log, self, back, connection.peer, preamble, backend.name, http,
        )

    def backend_connected(self, back: _Leg) -> None:
        """Send the header and buffered bytes, then start copying both ways."""
        self.dialing = None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        connection = self.connection
        client = self.transport
        server = back.transport
        connection.connected()
        connection.accept()
        back.sink = client
        back.direct = _direct(client)
        self.sink = server
        self.direct = _direct(server)
        target = self.target
        self.budget = back.budget = _splice.budget(
            target.reactor, self.direct and back.direct, target.splice_after, target.fd_reactor
        )
        # Plain socket sinks get their producer registered on the first write
        # that has to buffer (see dataReceived); other transports right away.
        _no_delay(client)
        if type(server) is not _Outgoing:
            _no_delay(server)  # connectTCP's transports (ours already have it)
        if not back.direct:
            client.registerProducer(server, True)
        if not self.direct:
            server.registerProducer(client, True)
        pending = self.pending
        data = self._first_bytes(connection, client, server)
        self.connection = None  # drop the cycle through the sniffer
        sniffer = getattr(connection, "sniffer", None)
        # Attached us already (the backend answered after attach returned)? Then the
        # client's reads skip _Front from now on: one call fewer each.
        if sniffer is not None and sniffer.dataReceived == self._held:
            sniffer.dataReceived = _Leg.dataReceived.__get__(self)
        self._watch(connection, back)
        if data:
            _Leg.dataReceived(self, data)  # one send(2) when the socket takes it all
        if self.read_done:
            self.read_done = False
            _Leg.readConnectionLost(self)
        elif pending:
            client.resumeProducing()  # in case PENDING_LIMIT paused it


@implementer(ITarget)
class ProxyTarget:
    """Byte-for-byte proxy to backends, round-robin with failover.

    ``endpoints`` are client endpoint strings (``tcp:``, ``unix:``, ``tls:``...)
    or IStreamClientEndpoint objects; ``proxy_header`` is None, "v1" or "v2";
    ``rewrite_via`` (net.tcp) is True (the backend's address) or a ``net.tcp://HOST:PORT``.
    ``ProxyTarget(["tcp:127.0.0.1:22"])`` takes the reactor of the multiplexer it
    first serves; ``ProxyTarget(reactor, [...])`` names it.
    """

    kind = "proxy"
    splice_after: int | None = _splice.SPLICE_AFTER
    """Bytes copied in Python before splice(2) takes over a plain pair; None: never."""
    relay: bool = True
    """Copy plain pairs in the multiplexer's relay (targets/_relay.py) instead of through transports."""

    def __init__(
        self,
        reactor: Any = None,
        endpoints: Sequence[str | IStreamClientEndpoint] | str | None = None,
        connect_timeout: float | None = None,
        proxy_header: str | None = None,
        timeouts: dict[str, float] | None = None,
        rewrite_via: bool | str = False,
    ) -> None:
        if endpoints is None and _are_endpoints(reactor):
            reactor, endpoints = None, reactor
        if isinstance(endpoints, str) or IStreamClientEndpoint.providedBy(endpoints):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("a proxy target needs at least one backend endpoint")
        if proxy_header is not None and proxy_header not in PROXY_HEADER_VERSIONS:
            raise ValueError(f"proxy_header must be 'v1' or 'v2', not {proxy_header!r}")
        self.reactor = reactor
        self.endpoints = tuple(endpoints)
        self.backends: tuple[Backend, ...] = ()
        self.all_backends: tuple[Backend, ...] = ()
        self.fd_reactor = False
        if reactor is not None:
            self.bind(reactor)
        else:
            _check_syntax(self.endpoints)
        self.overrides = dict(timeouts or {})
        """Timeouts this route sets itself; the others come from the multiplexer's."""
        if connect_timeout is not None:
            self.overrides["connect"] = connect_timeout
        self.connect_timeout = self.overrides.get("connect", Timeouts.connect)
        self._timeouts: tuple[Any, Timeouts] = (None, Timeouts())
        self._plan: WatchPlan | None = None
        self.proxy_header = proxy_header
        self.rewrite_via = rewrite_via
        self.first = 0
        names = ", ".join(s if isinstance(s, str) else _endpoint_name(s) for s in self.endpoints)
        header = f" (PROXY {proxy_header})" if proxy_header else ""
        if rewrite_via:
            header += " (Via rewritten)"
        self.description = f"proxy to {names}{header}"

    def bind(self, reactor: Any) -> None:
        """Dial with ``reactor`` from now on (parses the endpoint strings with it)."""
        self.reactor = reactor
        self.fd_reactor = IReactorFDSet.providedBy(reactor)
        """Whether the reactor watches file descriptors (splice needs it): asked once, not per pair."""
        self.all_backends = tuple(Backend(reactor, spec) for spec in self.endpoints)
        self.backends = self.all_backends
        """The backends in rotation: all of them, or the healthy ones when checked."""

    health: Any = None
    """A portmux.targets._health.HealthChecker keeping ``backends`` to the healthy ones."""

    def timeouts_for(self, mux: Any) -> Timeouts:
        """The multiplexer's timeouts with this route's overrides (cached per value)."""
        base = getattr(mux, "timeouts", None) or Timeouts()
        cached_base, timeouts = self._timeouts
        if cached_base is not base:
            timeouts = replace(base, **self.overrides)
            self._timeouts = (base, timeouts)
            self._plan = None
            self.connect_timeout = timeouts.connect
        return timeouts

    def plan_for(self, mux: Any) -> WatchPlan:
        """The watch plan of ``timeouts_for(mux)``: phases and shared queues, built once per value."""
        timeouts = self.timeouts_for(mux)
        plan = self._plan
        if plan is None or plan.timeouts is not timeouts:
            plan = self._plan = WatchPlan(self.reactor, timeouts)
        return plan

    def via_address(self, backend: Any) -> str | None:
        """The net.tcp address a rewritten Via names: the configured one, or the backend's."""
        if isinstance(self.rewrite_via, str):
            return self.rewrite_via
        return nmf.address_of(backend.getPeer())

    def start(self) -> None:
        """Start health checks, if configured; backends are dialled per connection."""
        if self.health is not None:
            self.health.start(self)

    def stop(self) -> None:
        """Stop health checks; open connections finish on their own."""
        if self.health is not None:
            self.health.stop()

    def attach(self, connection: Any) -> IProtocol:
        """Dial a backend and return the client leg.

        The client keeps being read while dialling (so a client that leaves is
        noticed and the dial cancelled), up to PENDING_LIMIT bytes, then paused.
        """
        if self.reactor is None:
            self.bind(connection.reactor)
        if not self.backends:  # health checks found every backend down
            connection.refuse(refusal.UNAVAILABLE, "no backend is up", why=refusal.NO_BACKEND_UP)
            return None  # type: ignore[return-value]
        self.timeouts_for(connection.mux)
        front = _Front(self, connection)
        front.start = self.first
        self.first = (self.first + 1) % len(self.backends)
        front.dial()
        if front.relayed:  # the backend answered at once and the relay took the pair
            return _relay.RELAYED  # type: ignore[return-value]
        return front  # type: ignore[return-value]


def _are_endpoints(value: Any) -> bool:
    """True for what can only be the endpoints argument: a string or a list/tuple of them."""
    return isinstance(value, (str, list, tuple)) or IStreamClientEndpoint.providedBy(value)


def _check_syntax(endpoints: Sequence[str | IStreamClientEndpoint]) -> None:
    """Raise ValueError now for an endpoint string no parser accepts (no reactor needed)."""
    for spec in endpoints:
        if not isinstance(spec, str):
            continue
        try:
            clientFromString(None, spec)
        except AttributeError:  # a parser that wants the reactor already: check it later
            pass
        except Exception as e:  # parsers raise many kinds of errors
            raise ValueError(f"unparsable client endpoint {spec!r}: {e}") from e
