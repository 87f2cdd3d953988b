# -*- test-case-name: tests.test_twisted_internals -*-
"""Every Twisted private name portmux uses, behind one capability check.

``FAST_PATHS`` is a module constant computed once, at import: True when
``PORTMUX_NO_FAST_PATHS`` is unset and ``missing()`` finds every private name
with the shape portmux expects.  When False, every function here answers through
public Twisted API only, with the same observable behaviour (see
docs/architecture.md, "Twisted internals").
"""

from __future__ import annotations

import os
import select
import socket
import sys
from errno import EINTR, EWOULDBLOCK
from typing import Any

from OpenSSL.SSL import WantReadError as SSLWantReadError
from twisted.internet import abstract, error, main, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

__all__ = [
    "ABORTED",
    "DONE",
    "ENV_SWITCH",
    "FAST_PATHS",
    "LOST",
    "LeanPoll",
    "OutgoingConnection",
    "SocketWatch",
    "TerminatingTLS",
    "UnsentWatch",
    "abort_now",
    "close_now",
    "detach",
    "detachable",
    "drain_http_buffer",
    "endpoint_label",
    "flush",
    "has_unsent",
    "lean_dispatch",
    "local_port",
    "missing",
    "parse_proxy_v1",
    "parse_proxy_v2",
    "plain_socket",
    "request_head",
    "send_now",
    "shut_write_now",
    "splice_ready",
    "stream_connection",
    "take_unsent",
    "tcp_endpoint_parts",
    "unix_endpoint_path",
    "unsent_size",
    "watch_socket_close",
]

log = Logger(namespace="portmux")

ENV_SWITCH = "PORTMUX_NO_FAST_PATHS"
"""Set to a non-empty value other than ``0`` to force the public-API fallback."""

_TRANSPORT_NAMES = (
    "_writeDisconnecting", "_writeDisconnected", "dataBuffer", "_shouldShutdown",
    "_closeWriteConnection", "writeSomeData", "_closeSocket", "doWrite", "startReading",
    "stopReading", "producer",
)
_TCP_ENDPOINT_NAMES = ("_host", "_port", "_bindAddress")
_UNIX_ENDPOINT_NAMES = ("_path", "_checkPID")


def _has_attributes(obj: object, names: tuple[str, ...]) -> list[str]:
    return [f"{type(obj).__name__}.{name}" for name in names if not hasattr(obj, name)]


def _missing_transport() -> list[str]:
    problems = _has_attributes(tcp.Connection, _TRANSPORT_NAMES)
    if "_tempDataLen" not in abstract.FileDescriptor.__init__.__code__.co_names:
        problems.append("FileDescriptor._tempDataLen")
    for name in ("CONNECTION_LOST", "CONNECTION_DONE"):
        if not isinstance(getattr(main, name, None), error.ConnectionClosed):
            problems.append(f"twisted.internet.main.{name}")
    return problems


def _missing_endpoints() -> list[str]:
    problems: list[str] = []
    for kind, host in ((TCP4ClientEndpoint, "127.0.0.1"), (TCP6ClientEndpoint, "::1")):
        endpoint = kind(None, host, 1, bindAddress=None)
        problems += _has_attributes(endpoint, _TCP_ENDPOINT_NAMES)
        if getattr(endpoint, "_host", None) != host or getattr(endpoint, "_port", None) != 1:
            problems.append(f"{kind.__name__}._host/_port values")
    unix = UNIXClientEndpoint(None, "/x")
    problems += _has_attributes(unix, _UNIX_ENDPOINT_NAMES)
    if getattr(unix, "_path", None) != "/x":
        problems.append("UNIXClientEndpoint._path value")
    return problems


def _missing_h2() -> list[str]:
    try:
        from twisted.web._http2 import H2Stream
    except ImportError:  # no HTTP/2 support installed: no streams to look through
        return []
    return [] if "_conn" in H2Stream.__init__.__code__.co_names else ["H2Stream._conn"]


def _private_v1(line: bytes) -> tuple[Any, Any]:
    from twisted.protocols.haproxy._v1parser import V1Parser

    info = V1Parser.parse(line)
    return info.source, info.destination


def _private_v2(header: bytes) -> tuple[Any, Any]:
    from twisted.protocols.haproxy._v2parser import V2Parser

    info = V2Parser.parse(header)
    return info.source, info.destination


def _missing_haproxy() -> list[str]:
    try:
        v1 = _private_v1(b"PROXY TCP4 127.1.3.4 127.5.7.8 1 2")
        v2 = _private_v2(
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x7f\x01\x03\x04\x7f\x05\x07\x08\x00\x01\x00\x02"
        )
    except Exception as e:  # noqa: BLE001 - any failure means the shape changed
        return [f"twisted.protocols.haproxy parsers ({e!r})"]
    expected = (IPv4Address("TCP", "127.1.3.4", 1), IPv4Address("TCP", "127.5.7.8", 2))
    return [] if v1 == v2 == expected else ["twisted.protocols.haproxy parser results"]


def _missing_http1() -> list[str]:
    from twisted.web.http import HTTPChannel

    problems = _has_attributes(HTTPChannel(), ("_dataBuffer",))
    names = HTTPChannel.lineReceived.__code__.co_names
    problems += [f"HTTPChannel.{n}" for n in ("_command", "_path") if n not in names]
    return problems


_TLS_MAKE_CONNECTION_NAMES = ("_tlsConnection", "_appSendBuffer", "_creatorCallable",
                              "registerProtocol", "_connectWrapped", "_checkHandshakeStatus")
_TLS_FLUSH_NAMES = ("_tlsConnection", "bio_read", "write")


def _missing_tls() -> list[str]:
    """The TLSMemoryBIOProtocol internals ``TerminatingTLS`` re-implements two methods over."""
    problems: list[str] = []
    for method, names in (("makeConnection", _TLS_MAKE_CONNECTION_NAMES),
                          ("_flushSendBIO", _TLS_FLUSH_NAMES)):
        code = getattr(getattr(BufferingTLSTransport, method, None), "__code__", None)
        found = code.co_names if code is not None else ()
        problems += [f"TLSMemoryBIOProtocol.{method}: {n}" for n in names if n not in found]
    if "_creatorCallable" not in TLSMemoryBIOFactory.__init__.__code__.co_names:
        problems.append("TLSMemoryBIOFactory._creatorCallable")
    if not callable(getattr(BufferingTLSTransport, "_tlsShutdownFinished", None)):
        problems.append("TLSMemoryBIOProtocol._tlsShutdownFinished")
    return problems


def missing() -> list[str]:
    """Names of the private Twisted things portmux relies on that this Twisted lacks."""
    return (_missing_transport() + _missing_endpoints() + _missing_h2() + _missing_haproxy()
            + _missing_http1() + _missing_tls())


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "") not in ("", "0")


FAST_PATHS: bool = not _switched_off() and not missing()
"""Computed once at import; never changes afterwards (the only module state here)."""


# -- endpoints ---------------------------------------------------------------


def tcp_endpoint_parts(endpoint: object) -> tuple[str, int, Any] | None:
    """(host, port, bindAddress) of a TCP4/TCP6 client endpoint, or None (then use connect)."""
    if not FAST_PATHS or not isinstance(endpoint, (TCP4ClientEndpoint, TCP6ClientEndpoint)):
        return None
    host, port = getattr(endpoint, "_host", None), getattr(endpoint, "_port", None)
    if isinstance(host, str) and isinstance(port, int):
        return host, port, getattr(endpoint, "_bindAddress", None)
    return None


def unix_endpoint_path(endpoint: object) -> str | None:
    """The path of a UNIX client endpoint without PID checking, or None (then use connect)."""
    if not FAST_PATHS or not isinstance(endpoint, UNIXClientEndpoint):
        return None
    path = getattr(endpoint, "_path", None)
    return path if isinstance(path, str) and not getattr(endpoint, "_checkPID", 0) else None


def endpoint_label(endpoint: object) -> str:
    """A display name for an endpoint object: ``Type(host:port)`` when known, else repr."""
    parts = tcp_endpoint_parts(endpoint)
    if parts is not None:
        return f"{type(endpoint).__name__}({parts[0]}:{parts[1]})"
    return repr(endpoint)


# -- HTTP/2 ------------------------------------------------------------------


def stream_connection(channel: Any) -> Any:
    """The connection an HTTP/2 stream hangs off (its ``transport`` is None); else ``channel``."""
    if FAST_PATHS:
        return getattr(channel, "_conn", channel)
    return channel


def request_head(request: Any) -> tuple[bytes, bytes] | None:
    """(method, target) of a request whose body is still arriving, or None when unknown.

    HTTP/2 streams carry them publicly; an HTTP/1 channel keeps them in private
    attributes until the body ends (without FAST_PATHS: None, and the body is
    buffered by twisted.web before the request is routed).
    """
    channel = request.channel
    method, target = getattr(channel, "command", None), getattr(channel, "path", None)
    if isinstance(method, bytes) and isinstance(target, bytes):
        return method, target
    if FAST_PATHS:
        method, target = getattr(channel, "_command", None), getattr(channel, "_path", None)
        if isinstance(method, bytes) and isinstance(target, bytes):
            return method, target
    return None


def drain_http_buffer(channel: Any) -> bytes:
    """The bytes an HTTP/1 channel buffered while a request was handled, removed from it.

    Used when a request's connection becomes a tunnel (101 Switching Protocols).
    Without FAST_PATHS: b"" (a client that did not wait for the 101 loses what
    it sent early; WebSocket clients wait).
    """
    if not FAST_PATHS:
        return b""
    pending = b"".join(getattr(channel, "_dataBuffer", ()))
    channel._dataBuffer = []
    return pending


# -- PROXY protocol headers --------------------------------------------------


class _HeaderTransport:
    """Just enough transport for HAProxyProtocolWrapper to parse one header into."""

    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True

    def getPeer(self) -> None:
        return None

    def getHost(self) -> None:
        return None


class _CapturingEndpoint:
    """A server endpoint whose ``listen`` only keeps the factory it is given."""

    def __init__(self) -> None:
        self.factory: Any = None

    def listen(self, factory: Any) -> None:
        self.factory = factory


def _public_parse(header: bytes) -> tuple[Any, Any] | None:
    """Parse one complete header with the factory ``proxyEndpoint`` wraps; None if invalid."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.haproxy import proxyEndpoint

    capture = _CapturingEndpoint()
    proxyEndpoint(capture).listen(Factory.forProtocol(Protocol))  # type: ignore[arg-type]
    wrapper: Any = capture.factory.buildProtocol(None)
    transport = _HeaderTransport()
    wrapper.transport = transport  # not makeConnection: the wrapped protocol must stay idle
    try:
        wrapper.dataReceived(header)
    except ValueError:
        return None
    if transport.lost:
        return None
    return wrapper.getPeer(), wrapper.getHost()


def parse_proxy_v1(line: bytes) -> tuple[Any, Any] | None:
    """(source, destination) of a PROXY v1 line without its CRLF, or None when invalid."""
    if FAST_PATHS:
        from twisted.protocols.haproxy._exceptions import InvalidProxyHeader

        try:
            return _private_v1(line)
        except (InvalidProxyHeader, ValueError):
            return None
    return _public_parse(line + b"\r\n")


def parse_proxy_v2(header: bytes) -> tuple[Any, Any] | None:
    """(source, destination) of one complete PROXY v2 header (None, None for LOCAL), or None."""
    if FAST_PATHS:
        from twisted.protocols.haproxy._exceptions import InvalidProxyHeader

        try:
            return _private_v2(header)
        except (InvalidProxyHeader, ValueError):
            return None
    return _public_parse(header)


# -- transports ---------------------------------------------------------------


def flush(reactor: Any, transport: Any) -> None:
    """Get what was just written out before a pending EOF is read (which would drop it).

    Fast path: one ``doWrite`` now.  Fallback: stop reading for two reactor turns,
    so one poll with the socket writable (and its ``doWrite``) runs before reading.
    """
    if transport is None or getattr(transport, "disconnecting", True):
        return
    if not getattr(transport, "connected", False):
        return
    if FAST_PATHS:
        do_write = getattr(transport, "doWrite", None)
        if do_write is not None:
            do_write()
        return
    transport.pauseProducing()
    reactor.callLater(0, reactor.callLater, 0, _resume, transport)


def _resume(transport: Any) -> None:
    if transport.connected and not transport.disconnecting:
        transport.resumeProducing()


def has_unsent(transport: Any) -> bool:
    """True when a socket transport still buffers bytes it has not sent."""
    if getattr(transport, "dataBuffer", b""):
        return True
    return bool(FAST_PATHS and getattr(transport, "_tempDataLen", 0))


class UnsentWatch:
    """Tells when a transport nothing writes to any more has sent all it buffers.

    Polled (``all_sent``) from timers, the reactor polling in between.  Fast path:
    the transport's buffers, exactly.  Fallback: bytes written this reactor turn
    are not visible through public API until the reactor's next write, so it says
    True only when, at the previous poll too, nothing was buffered and the socket
    was writable (so a reactor poll since then wrote whatever was pending).
    """

    __slots__ = ("_settled", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._settled = False

    def all_sent(self) -> bool:
        """True once nothing written to the transport is left unsent."""
        if FAST_PATHS:
            return not has_unsent(self.transport)
        empty = not getattr(self.transport, "dataBuffer", b"")
        earlier, self._settled = self._settled, empty and _writable(self.transport)
        return earlier and empty


def _writable(transport: Any) -> bool:
    """The transport's socket has room to send now (poll(2), no waiting)."""
    try:
        fd = transport.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLOUT for _, events in poller.poll(0))


def local_port(transport: Any) -> int | None:
    """The local port of a connection's transport (its listening port when accepted), or None.

    An accepted TCP connection's port comes from its listening port's cached number:
    no getsockname(2) and no address object per connection.
    """
    if FAST_PATHS and type(transport) is tcp.Server and "getHost" not in vars(transport):
        # (a trusted PROXY header's destination replaces getHost: core/proxied.py)
        port = getattr(transport.server, "_realPortNumber", None)
        if isinstance(port, int):
            return port
    return getattr(transport.getHost(), "port", None)


def plain_socket(transport: Any) -> bool:
    """True when ``transport`` is a plain socket transport portmux may send() on directly."""
    cls = type(transport)
    if cls is tcp.Server or cls is OutgoingConnection:  # the usual two: no MRO walk
        return FAST_PATHS and not transport.TLS
    return (
        FAST_PATHS
        and isinstance(transport, tcp.Connection)
        and type(transport).writeSomeData is tcp.Connection.writeSomeData
        and not getattr(transport, "TLS", False)
    )


def _idle(sink: Any) -> bool:
    """A connected plain socket transport with nothing buffered and not closing."""
    return bool(
        not sink.dataBuffer
        and not sink._tempDataLen
        and sink.connected
        and not sink.disconnecting
        and not sink._writeDisconnecting
    )


def splice_ready(transport: Any) -> bool:
    """True when a ``plain_socket`` transport may have its socket copied by the kernel now.

    It must be connected and neither closing nor half-closed; what it still
    buffers is taken with ``take_unsent``.  Fallback: never (the proxy keeps
    copying through the public transport API).
    """
    return bool(
        FAST_PATHS
        and plain_socket(transport)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
    )


def unsent_size(transport: Any) -> int:
    """Bytes a ``splice_ready`` transport buffers but has not sent."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


def take_unsent(transport: Any) -> bytes:
    """Empty a ``splice_ready`` transport's write buffer and return what it held, in order.

    The caller sends those bytes ahead of anything newer (the splice pipe).
    """
    data = bytes(memoryview(transport.dataBuffer)[transport.offset:])
    if transport._tempDataBuffer:
        data += b"".join(transport._tempDataBuffer)
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    transport.stopWriting()
    return data


def send_now(sink: Any, data: bytes) -> bytes:
    """send(2) on a ``plain_socket`` sink whose buffer is empty; returns what it did not take.

    Ordering holds because nothing is buffered; what is returned goes through write().
    """
    if (
        not sink.dataBuffer
        and not sink._tempDataLen
        and sink.connected
        and not sink._writeDisconnected
    ):
        try:
            sent = sink.socket.send(data)
        except OSError:  # EAGAIN, EINTR, or an error write() will meet again
            return data
        return data[sent:] if sent else data
    return data


def shut_write_now(sink: Any, leg: Any) -> bool:
    """Half-close an idle ``plain_socket`` sink at once; False (nothing done) if it buffers.

    Does now what FileDescriptor.doWrite would do a reactor turn later; ``leg``
    (the protocol reading ``sink``) is told directly, or the transport's own
    ``writeConnectionLost`` path runs when it is None.
    """
    if not _idle(sink):
        return False
    sink._writeDisconnecting = True
    sink._writeDisconnected = True
    if leg is None:
        sink._closeWriteConnection()  # shutdown(SHUT_WR), then writeConnectionLost
        return True
    try:
        sink.socket.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    leg.writeConnectionLost()
    return True


DONE = Failure(error.ConnectionDone())
"""One shared Failure for clean closes, as twisted.internet.posixbase does for its own."""


def close_now(transport: Any, read_done: bool) -> bool:
    """Close a ``plain_socket`` transport whose FIN went out (or is owed) with ``DONE``.

    Returns False, doing nothing, when the write side is still open and it is not
    idle after the peer's FIN (``read_done``): then use loseConnection().
    """
    if (
        transport.connected
        and not transport.disconnecting
        and (transport._writeDisconnected or (read_done and _idle(transport)))
    ):
        transport._shouldShutdown = False  # write side shut, or close(2) sends the FIN
        if type(transport) is tcp.Server:  # accepted sockets: no Failure.check per close
            _connection_done(transport)
        else:
            transport.connectionLost(DONE)
        return True
    return False


def _connection_done(transport: Any) -> None:
    """tcp.Connection.connectionLost(DONE), minus its Failure.check for an abort.

    (``check`` qualifies the exception class's name each time: ~2 µs per socket.)
    """
    if not hasattr(transport, "socket"):
        return
    abstract.FileDescriptor.connectionLost(transport, DONE)
    transport._closeSocket(True)
    protocol: Any = transport.protocol
    del transport.protocol
    del transport.socket
    del transport.fileno
    protocol.connectionLost(DONE)


ABORTED = Failure(error.ConnectionAborted())
"""One shared Failure for connections portmux resets itself (``abort_now``)."""


def abort_now(transport: Any) -> None:
    """Reset ``transport``'s connection now: SO_LINGER 0 and close(2), no FIN handshake.

    For a connection that sent nothing and is closed to make room (sniff pressure):
    it has no answer to read, and a reset costs neither a write-readiness round
    nor a TIME_WAIT.  tcp.Connection.abortConnection does the same one reactor
    iteration later (a DelayedCall per connection); accepted sockets are closed
    here at once, other transports through abortConnection.
    """
    if FAST_PATHS and type(transport) is tcp.Server and transport.connected \
            and not transport.disconnected and hasattr(transport, "socket"):
        abstract.FileDescriptor.connectionLost(transport, ABORTED)  # stop reading/writing
        transport._closeSocket(False)  # Twisted sets SO_LINGER {1, 0}: close(2) sends a RST
        protocol: Any = transport.protocol
        del transport.protocol
        del transport.socket
        del transport.fileno
        protocol.connectionLost(ABORTED)
        return
    transport.abortConnection()


def detachable(transport: Any) -> bool:
    """Whether ``detach`` would take ``transport``'s socket (a plain accepted socket, open, no producer)."""
    return bool(splice_ready(transport) and type(transport) is tcp.Server and transport.producer is None)


def detach(transport: Any) -> tuple[socket.socket, bytes, Any, SocketWatch | None] | None:
    """Take a ``detachable`` transport's socket away from Twisted for good, for the relay.

    Returns the socket, what the transport still buffered (to be sent first), its
    protocol and its accounting watch (``watch_socket_close``), or None (nothing
    changed).  The transport leaves the reactor and lets go of all three, as its own
    close would, and is then garbage: the caller closes the socket, calls the watch's
    ``socket_eof``/``socket_closing`` and the protocol's ``connectionLost`` itself.
    """
    if not (FAST_PATHS and type(transport) is tcp.Server and transport.connected):
        return None  # (the caller asked ``detachable`` already: this is the cheap part again)
    data = take_unsent(transport) if unsent_size(transport) else b""
    transport.stopReading()
    transport.stopWriting()
    attributes = vars(transport)
    watch = attributes.pop("_closeSocket", None)
    attributes.pop("readConnectionLost", None)
    if isinstance(watch, SocketWatch):
        watch.transport = None  # no transport <-> watch cycle left
    else:
        watch = None
    skt, protocol = transport.socket, transport.protocol
    transport.connected = 0
    transport.disconnected = 1
    del transport.protocol
    del transport.socket
    del transport.fileno
    return skt, data, protocol, watch


LOST = Failure(error.ConnectionLost())
"""One shared Failure for connections whose peer reset them (seen by the relay)."""


class SocketWatch:
    """Watches one socket transport's EOF and close; subclasses say what to do then.

    ``socket_eof(write_open)`` runs when the peer's FIN is read (``write_open``: our
    own FIN had not been sent yet); ``socket_closing(socket)`` just before the socket
    is closed.  The watch itself stands in for the transport's ``_closeSocket`` (it is
    callable), so watching costs one object and one bound method per connection.
    """

    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: Any = None

    def socket_eof(self, write_open: bool) -> None:
        """The peer's FIN was read."""

    def socket_closing(self, skt: socket.socket) -> None:
        """The transport is about to close ``skt``."""

    def read_connection_lost(self, reason: Failure) -> None:
        transport = self.transport
        # Had our FIN gone out before the peer's arrived?  Twisted shuts the socket's
        # write side right after setting _writeDisconnected: no getsockopt needed.
        self.socket_eof(not transport._writeDisconnected)
        type(transport).readConnectionLost(transport, reason)

    def __call__(self, orderly: bool) -> None:
        """Stands in for ``tcp.Connection._closeSocket``."""
        transport = self.transport
        skt = getattr(transport, "socket", None)
        if skt is not None:
            self.socket_closing(skt)
        # Break the transport -> watch -> transport cycle now, so the connection is
        # freed by reference counting, not left to the cyclic garbage collector.
        attributes = vars(transport)
        del attributes["_closeSocket"]
        attributes.pop("readConnectionLost", None)
        self.transport = None
        type(transport)._closeSocket(transport, orderly)


def watch_socket_close(transport: Any, watch: SocketWatch) -> bool:
    """Have ``watch`` (a SocketWatch) told of a plain socket transport's EOF and close
    (accounting reads TCP_INFO there).

    Replaces, on this transport instance only, ``tcp.Connection._closeSocket`` and
    ``readConnectionLost``: nothing runs per read. Returns False (nothing watched) for
    other transports or with fast paths off: then connections report no byte counts.
    """
    if not FAST_PATHS or not isinstance(transport, tcp.Connection):
        return False
    watch.transport = transport
    transport._closeSocket = watch  # type: ignore[method-assign]
    transport.readConnectionLost = watch.read_connection_lost  # type: ignore[method-assign]
    return True


_TCP_INFO: int = getattr(socket, "TCP_INFO", -1)
_CLOSE_WAIT = b"\x08" if _TCP_INFO != -1 and sys.platform.startswith("linux") else None
"""First byte of Linux's struct tcp_info once the peer's FIN arrived (TCP_CLOSE_WAIT)."""


class OutgoingConnection(tcp.Connection):
    """A connected socket portmux dialled itself, as an ordinary TCP transport.

    Only built when FAST_PATHS: it relies on tcp.Connection's internals.
    """

    logstr = "portmux-proxy"

    def __init__(
        self,
        skt: socket.socket,
        protocol: IProtocol,
        reactor: Any,
        peer: tuple[str, int],
        family: int = socket.AF_INET,
    ) -> None:
        # tcp.Connection.__init__ minus its setblocking(False): one ioctl less.
        abstract.FileDescriptor.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = protocol
        self.connected = 1
        self._peer = peer
        self._family = family

    def _address(self, host: str, port: int) -> IAddress:
        if self._family == socket.AF_INET6:
            return IPv6Address("TCP", host, port)
        return IPv4Address("TCP", host, port)

    def getHost(self) -> IAddress:
        host, port = self.socket.getsockname()[:2]
        return self._address(host, port)

    def getPeer(self) -> IAddress:
        return self._address(*self._peer)

    _reading = False

    def startReading(self) -> None:
        self._reading = True
        tcp.Connection.startReading(self)

    def stopReading(self) -> None:
        self._reading = False
        tcp.Connection.stopReading(self)

    def doRead(self) -> Any:
        """Read once; after a short read, if the peer already sent its FIN, read again.

        A backend that answers and closes (HTTP/1.0 style) usually has both the
        answer and its FIN queued when we wake up: handling the EOF in this same
        reactor turn saves a whole dispatch per connection.  TCP_INFO's state
        byte says whether the FIN arrived, without a failing recv per read.
        """
        skt = self.socket
        got = self._receive(skt)
        if got.__class__ is not int:
            return got
        if (
            got < self.bufferSize
            and self._reading
            and self.connected
            and not self.disconnecting
            and _CLOSE_WAIT is not None
            and skt.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1) == _CLOSE_WAIT
        ):
            got = self._receive(skt)
            if got.__class__ is not int:
                return got
        return None

    def _receive(self, skt: socket.socket) -> Any:
        """One recv(2) handed to the protocol: the byte count, or what doRead must return."""
        try:
            data = skt.recv(self.bufferSize)
        except OSError as e:
            return None if e.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        protocol: Any = self.protocol
        protocol.dataReceived(data)
        return len(data)

    def connectionLost(self, reason: Failure) -> None:
        """As tcp.Connection's, minus its Failure.check for an abort on the shared clean close."""
        if reason is not DONE:
            tcp.Connection.connectionLost(self, reason)
        else:
            _connection_done(self)

    def readConnectionLost(self, reason: Failure) -> None:
        """EOF: tell the leg directly (it is half-closeable; no adapter lookup)."""
        protocol: Any = self.protocol
        try:
            protocol.readConnectionLost()
        except BaseException:  # noqa: BLE001 - as tcp.Connection does
            log.failure("proxy leg failed on EOF")
            self.connectionLost(Failure())


# -- the reactor's event dispatch ------------------------------------------------

_EPOLL_NAMES = ("_poller", "_selectables", "_doReadOrWrite")


class LeanPoll:
    """An epoll reactor's ``doIteration`` without the per-event log context.

    EPollReactor.doPoll wraps every ready descriptor's handler in
    ``log.callWithLogger`` (its ``logPrefix``, a copied and updated context dict,
    two context-tracker frames): about a dozen Python calls per event, three
    events per proxied connection, two per round trip.  This poll calls the same
    ``_doReadOrWrite`` directly.  ``_doReadOrWrite`` still catches what a handler
    raises, logs it and disconnects that descriptor; what escapes it is logged here
    as callWithLogger would.  Only the legacy ``system`` field of log lines emitted
    inside a handler changes (``-`` instead of the transport's prefix).
    """

    __slots__ = ("reactor",)

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def __call__(self, timeout: float | None) -> None:
        reactor = self.reactor
        selectables = reactor._selectables
        try:
            events = reactor._poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as e:
            if e.errno == EINTR:
                return
            raise
        handle = reactor._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - as log.callWithLogger does
                legacy_log.err()


def lean_dispatch(reactor: Any) -> bool:
    """Make ``reactor`` (Twisted's stock epoll reactor) dispatch events with ``LeanPoll``.

    Returns False and changes nothing with fast paths off, for any other reactor,
    a subclass with its own poll, or one already patched: the public fallback is
    Twisted's own dispatch.
    """
    if not FAST_PATHS:
        return False
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll on this platform
        return False
    cls = type(reactor)
    if (
        not isinstance(reactor, EPollReactor)
        or cls.doPoll is not EPollReactor.doPoll
        or cls.doIteration is not EPollReactor.doPoll
        or "doIteration" in vars(reactor)
        or _has_attributes(reactor, _EPOLL_NAMES)
        or not isinstance(getattr(reactor, "_selectables", None), dict)
    ):
        return False
    reactor.doIteration = LeanPoll(reactor)  # type: ignore[method-assign]
    return True


def _discard(data: bytes) -> None:
    """Where a closed TLS connection's late small writes go (it has no socket left)."""


class TerminatingTLS(BufferingTLSTransport):
    """Server-side TLS over an accepted socket, with two per-connection costs removed.

    ``makeConnection`` skips what a server does not need before the ClientHello is
    fed in: Twisted copies the socket's interfaces onto the protocol one
    ``directlyProvides`` at a time (each replacing the last, so only
    ``ILoggingContext`` remains, which the class already provides: ~9 zope
    declarations per connection for nothing) and tries a handshake with no input
    (OpenSSL can only answer "want read").  ``_flushSendBIO`` sends the TLS
    records at once when the socket has nothing queued (``send_now``), instead of
    a buffer, two ``epoll_ctl`` and one more reactor turn per flight.
    ``_tlsShutdownFinished`` drops the frames of an OpenSSL error's Failure (see
    there).  With fast paths off all three are Twisted's own.
    """

    def makeConnection(self, transport: Any) -> None:
        if not FAST_PATHS:
            super().makeConnection(transport)  # type: ignore[no-untyped-call]
            return
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer: list[bytes] = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        # No handshake attempt yet: a server reads the ClientHello first, and
        # dataReceived starts the handshake with it.

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        """Twisted's, then the Failure's frames replaced by strings (``cleanFailure``).

        ``_flushReceiveBIO`` keeps the OpenSSL error's Failure in a local of the frame
        its traceback holds: a reference cycle through every frame of the close (and
        their connection objects) that only the cycle collector frees, ~50 objects per
        connection ended without close_notify.  Without the traceback, reference
        counting frees them as the close returns.
        """
        super()._tlsShutdownFinished(reason)  # type: ignore[no-untyped-call]
        if FAST_PATHS and reason is not None and reason.tb is not None:
            reason.cleanFailure()

    def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:  # type: ignore[assignment]
        """Twisted's, then the small-write aggregator no longer points back at us.

        Twisted before 26.10 keeps ``_AggregateSmallWrites`` after the close, its
        ``_write`` a bound method of this protocol: a reference cycle only the cycle
        collector frees.  Later releases swap in a null aggregator themselves.
        """
        super().connectionLost(reason)
        if FAST_PATHS:
            aggregator = vars(self).get("_aggregator")
            if getattr(aggregator, "_write", None) is not None:
                aggregator._write = _discard  # type: ignore[union-attr]

    def _flushSendBIO(self) -> None:
        transport: Any = self.transport
        if not FAST_PATHS or not plain_socket(transport):
            super()._flushSendBIO()  # type: ignore[no-untyped-call]
            return
        try:
            data = self._tlsConnection.bio_read(2**15)
        except SSLWantReadError:  # nothing to send right now
            return
        rest = send_now(transport, data)
        if rest:
            transport.write(rest)
