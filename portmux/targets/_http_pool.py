# -*- test-case-name: tests.targets.test_http_proxy -*-
"""Keep-alive HTTP/1.1 connections to one backend; responses parsed by httptools (llhttp).

``BackendPool.take`` hands out an idle connection (newest first), ``dial`` makes
a new one; ``release`` keeps at most ``size`` idle connections, closed after
``idle_timeout`` seconds unused (one timer per pool).  Concurrency is not capped:
a request never waits for another one's connection (an upgraded WebSocket holds
its own).  Requests are framed here (Content-Length or chunked); responses are
parsed by llhttp, Node.js's parser, through httptools: strict about framing,
about 7 µs a response where a pure-Python state machine took 90 (see
docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

MAX_RESPONSE_HEAD = 65536
"""Bytes of a backend's response head accepted before the response is refused (502)."""
NO_BODY_STATUSES = frozenset({204, 304})


class BadResponse(Exception):
    """The backend's response could not be parsed, or its head is too large."""


class Exchange(TypingProtocol):
    """What a BackendConnection reports to (portmux.targets._http_exchange)."""

    def backend_response(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...

    def backend_data(self, data: bytes) -> None: ...

    def backend_end(self) -> None: ...

    def backend_switched(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                         trailing: bytes) -> None: ...

    def backend_tunnel(self, data: bytes) -> None: ...

    def backend_lost(self, reason: Failure) -> None: ...


class BackendConnection(Protocol):
    """One connection to a backend: one request at a time, its response parsed as it streams."""

    exchange: Exchange | None = None
    reused = False
    switched = False
    idle_since = 0.0
    request_done = False
    response_done = False
    keep_alive = False
    chunked = False
    _head_only = False
    _informational = False
    _upgrading = False
    _close_delimited = False

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.parser: Any = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.reason = b""

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    # -- the request ---------------------------------------------------------

    def send_head(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                  chunked: bool) -> None:
        """Write the request line and headers (already end-to-end and framed by the caller)."""
        self.parser = httptools.HttpResponseParser(self)
        self.headers, self.head_size, self.reason = [], 0, b""
        self.request_done = self.response_done = self.keep_alive = self._upgrading = False
        self.chunked = chunked
        self._head_only = method == b"HEAD"
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))  # type: ignore[union-attr]

    def send_body(self, data: bytes) -> None:
        if data:
            if self.chunked:
                self.transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))  # type: ignore[union-attr]
            else:
                self.transport.write(data)  # type: ignore[union-attr]

    def end_request(self) -> None:
        if self.chunked:
            self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
        self.request_done = True

    # -- the response: httptools callbacks ----------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_RESPONSE_HEAD:
            raise BadResponse(f"response head over {MAX_RESPONSE_HEAD} bytes")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 Continue etc.: the front answered for itself
            return
        if status == 101:
            self._upgrading = True  # httptools raises HttpParserUpgrade after this message
            return
        names = {name for name, _ in self.headers}
        self._close_delimited = (b"content-length" not in names and b"transfer-encoding" not in names
                                 and status not in NO_BODY_STATUSES and not self._head_only)
        exchange = self.exchange
        if exchange is not None:
            exchange.backend_response(status, self.reason, self.headers)
        if self._head_only or status in NO_BODY_STATUSES:
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None and not self.response_done:
            self.exchange.backend_data(body)

    def on_message_complete(self) -> None:
        if self._upgrading:
            return
        if self._informational:
            self._informational = False
            self.headers, self.head_size, self.reason = [], 0, b""
            return
        if not self.response_done:
            self._complete()

    def _complete(self) -> None:
        self.response_done = True
        self.keep_alive = bool(self.parser.should_keep_alive()) and not self._head_only
        if self._head_only:
            self.keep_alive = bool(self.parser.should_keep_alive())
            self.parser = None  # no body follows, whatever Content-Length said
        exchange = self.exchange
        if exchange is not None:
            exchange.backend_end()

    # -- transport events ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if self.switched:
            if exchange is not None:
                exchange.backend_tunnel(data)
            return
        if exchange is None or self.parser is None:  # a backend must not speak unasked
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.switched = True
            offset = upgrade.args[0] if upgrade.args else len(data)
            exchange.backend_switched(self.parser.get_status_code(), self.reason, self.headers,
                                      data[offset:])
        except (httptools.HttpParserError, BadResponse) as e:
            self.exchange = None
            self.transport.abortConnection()  # type: ignore[union-attr]
            exchange.backend_lost(Failure(BadResponse(f"malformed response: {e}")))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self.switched:
            exchange.backend_tunnel(b"")
            return
        if self._close_delimited and not self.response_done and self.headers:
            self.response_done = True  # a body without length ends with the connection
            exchange.backend_end()
            return
        exchange.backend_lost(reason)

    def reusable(self) -> bool:
        """True when both messages are complete and the backend keeps the connection."""
        return self.request_done and self.response_done and self.keep_alive

    def done(self) -> None:
        """The exchange is over: back to the pool when reusable, else closed."""
        self.exchange = None
        if self.transport is None:
            return
        if self.reusable():
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            self.pool.release(self)
        else:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection (the front went away mid-exchange)."""
        self.exchange = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _OneConnection(ClientFactory):
    """Hands the endpoint the one protocol instance already made, without log lines."""

    noisy = False

    def __init__(self, protocol: BackendConnection) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> BackendConnection:
        return self.protocol_instance


class BackendPool:
    """Idle keep-alive connections to one backend endpoint, and dialling new ones."""

    def __init__(
        self, reactor: Any, spec: str | IStreamClientEndpoint, size: int = 16,
        idle_timeout: float = 30.0, connect_timeout: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.endpoint: Any = clientFromString(reactor, spec) if isinstance(spec, str) else spec
        self.name = spec if isinstance(spec, str) else repr(spec)
        self.size = size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.idle: list[BackendConnection] = []
        self.open: set[BackendConnection] = set()
        self._sweep: Any = None

    def take(self) -> BackendConnection | None:
        """An idle connection (most recently used first), or None: then ``dial``."""
        idle = self.idle
        while idle:
            connection = idle.pop()
            if connection.transport is not None and connection.connected:
                connection.reused = True
                return connection
        return None

    def acquire(self) -> Deferred[BackendConnection]:
        """An idle connection, or a new one, as a Deferred."""
        connection = self.take()
        return succeed(connection) if connection is not None else self.dial()

    def dial(self) -> Deferred[BackendConnection]:
        """A new connection to the backend (``connect_timeout`` bounds the attempt)."""
        connection = BackendConnection(self)
        dialled: Deferred[BackendConnection] = self.endpoint.connect(_OneConnection(connection))
        dialled.addTimeout(self.connect_timeout, self.reactor)
        dialled.addCallback(self._opened)
        return dialled

    def _opened(self, connection: BackendConnection) -> BackendConnection:
        self.open.add(connection)
        return connection

    def release(self, connection: BackendConnection) -> None:
        """Keep ``connection`` for the next request, unless the pool is full."""
        if len(self.idle) >= self.size or self.idle_timeout <= 0:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            return
        connection.idle_since = self.reactor.seconds()
        self.idle.append(connection)
        if self._sweep is None:
            self._sweep = self.reactor.callLater(self.idle_timeout, self._close_stale)

    def _close_stale(self) -> None:
        """Close connections idle for ``idle_timeout``; one timer per pool, not per connection."""
        self._sweep = None
        now = self.reactor.seconds()
        for connection in [c for c in self.idle if now - c.idle_since >= self.idle_timeout]:
            self.idle.remove(connection)
            connection.transport.loseConnection()  # type: ignore[union-attr]
        if self.idle:
            oldest = min(c.idle_since for c in self.idle)
            self._sweep = self.reactor.callLater(oldest + self.idle_timeout - now, self._close_stale)

    def forget(self, connection: BackendConnection) -> None:
        """A connection closed: never hand it out again."""
        self.open.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        """Close every idle connection (the target stops)."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for connection in list(self.idle):
            connection.transport.loseConnection()  # type: ignore[union-attr]


__all__ = ["BackendConnection", "BackendPool", "BadResponse", "Exchange"]
