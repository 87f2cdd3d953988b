# -*- test-case-name: tests.targets.test_http_proxy -*-
"""Keep-alive HTTP/1.1 connections to one backend, each driven by an h11 client state machine.

``BackendPool.acquire`` hands out an idle connection (newest first) or dials a
new one; ``release`` keeps at most ``size`` idle connections, each closed after
``idle_timeout`` seconds unused.  Concurrency is not capped: a request never
waits for another one's connection (an upgraded WebSocket holds its own).
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

import h11
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

MAX_RESPONSE_HEAD = 65536
"""Bytes of a backend's response head h11 buffers before refusing it."""


class Exchange(TypingProtocol):
    """What a BackendConnection reports its events to (portmux.targets._http_exchange)."""

    def backend_event(self, event: Any) -> None: ...

    def backend_switched(self, trailing: bytes) -> None: ...

    def backend_lost(self, reason: Failure) -> None: ...


class BackendConnection(Protocol):
    """One connection to a backend: h11 frames what goes out and parses what comes back."""

    exchange: Exchange | None = None
    reused = False
    switched = False
    _idle_call: Any = None

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def send(self, event: Any) -> None:
        """Frame ``event`` (h11.Request, Data, EndOfMessage) and write it."""
        data = self.h11.send(event)
        if data:
            self.transport.write(data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.switched:
            if self.exchange is not None:
                self.exchange.backend_event(data)
            return
        exchange = self.exchange
        if exchange is None:  # a backend must not speak unasked: do not reuse it
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.h11.receive_data(data)
        while self.exchange is exchange:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self.exchange = None
                self.transport.abortConnection()  # type: ignore[union-attr]
                exchange.backend_lost(Failure(e))
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self.h11.their_state is h11.SWITCHED_PROTOCOL:
                    self.switched = True
                    exchange.backend_switched(self.h11.trailing_data[0])
                return
            exchange.backend_event(event)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            if self.switched:
                exchange.backend_event(b"")
            else:
                try:  # the backend may end a close-delimited body by closing
                    self.h11.receive_data(b"")
                    event = self.h11.next_event()
                    while event not in (h11.NEED_DATA, h11.PAUSED) and not isinstance(event, h11.ConnectionClosed):
                        exchange.backend_event(event)
                        if isinstance(event, h11.EndOfMessage):
                            return
                        event = self.h11.next_event()
                except h11.RemoteProtocolError:
                    pass
            exchange.backend_lost(reason)

    def reusable(self) -> bool:
        """True when both sides finished their messages and the backend keeps the connection."""
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def done(self) -> None:
        """The exchange is over: back to the pool when reusable, else closed."""
        self.exchange = None
        if self.transport is None:
            return
        if self.reusable():
            self.h11.start_next_cycle()
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

    def acquire(self) -> Deferred[BackendConnection]:
        """An idle connection (most recently used first), or a new one."""
        while self.idle:
            connection = self.idle.pop()
            if connection._idle_call is not None and connection._idle_call.active():
                connection._idle_call.cancel()
            connection._idle_call = None
            if connection.transport is not None and connection.connected:
                connection.reused = True
                return succeed(connection)
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
        self.idle.append(connection)
        connection._idle_call = self.reactor.callLater(
            self.idle_timeout, connection.transport.loseConnection)  # type: ignore[union-attr]

    def forget(self, connection: BackendConnection) -> None:
        """A connection closed: never hand it out again."""
        self.open.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if connection._idle_call is not None and connection._idle_call.active():
            connection._idle_call.cancel()
        connection._idle_call = None

    def close(self) -> None:
        """Close every idle connection (the target stops)."""
        for connection in list(self.idle):
            connection.transport.loseConnection()  # type: ignore[union-attr]


__all__ = ["BackendConnection", "BackendPool", "Exchange"]
