# -*- test-case-name: tests.targets.test_http_proxy,tests.targets.test_http_upgrade -*-
"""One front request proxied as one HTTP/1.1 backend request, streamed both ways.

The front is a twisted.web Request (HTTP/1.1 or an HTTP/2 stream); the back is a
pooled ``BackendConnection`` (requests framed there, responses parsed by httptools).  Bodies are never held whole: request
chunks are sent as they arrive, with the backend socket's send buffer pausing
the front (crosswise push producers), and response chunks are written to the
front, whose buffer pauses the backend socket.  Hop-by-hop headers (RFC 9110
§7.6.1) are dropped both ways; ``Forwarded``/``X-Forwarded-*`` are added when
configured; a ``101 Switching Protocols`` turns the front connection into a byte
tunnel to the same backend connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux.core import refusal
from portmux.core.routing import peer_ip
from portmux.protocols import http as http_protocol
from portmux.targets._http_pool import BackendConnection, BackendPool

log = Logger(namespace="portmux")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding",
    b"upgrade", b"trailer", b"content-length", b"host",
})
"""Dropped when copying headers: RFC 9110 §7.6.1's list, plus the framing we redo ourselves."""
PENDING_LIMIT = 65536
"""Request body bytes held while the backend is dialled before the front is paused."""
FORWARDED_STYLES = ("x-forwarded", "forwarded", "both")


def _connection_tokens(headers: Any) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", ()):
        tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def _origin_form(target: bytes) -> bytes:
    """``http://host/p?q`` → ``/p?q``; origin-form targets unchanged."""
    if target.startswith(b"/") or target == b"*":
        return target
    after = target.split(b"://", 1)[-1]
    slash = after.find(b"/")
    return after[slash:] if slash >= 0 else b"/"


def _forwarded_for(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else (ip or "unknown")


def backend_headers(
    request: Any, length: int | None, method: bytes, upgrade: bool, forwarded: str | None,
    client_ip: str, https: bool,
) -> list[tuple[bytes, bytes]]:
    """The headers sent to the backend for ``request``: end-to-end ones, then our framing."""
    headers = request.requestHeaders
    drop = HOP_BY_HOP | _connection_tokens(headers)
    out: list[tuple[bytes, bytes]] = []
    host = headers.getRawHeaders(b"host", [b""])[0] or request.getHost().host.encode("latin-1")
    out.append((b"host", host))
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in drop or lower.startswith(b":"):
            continue
        if forwarded in ("x-forwarded", "both") and lower in (b"x-forwarded-proto", b"x-forwarded-host"):
            continue
        for value in values:
            out.append((name, value))
    if upgrade:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", headers.getRawHeaders(b"upgrade")[0]))
    if length is None:
        out.append((b"transfer-encoding", b"chunked"))
    elif length or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"):
        out.append((b"content-length", b"%d" % length))
    proto = b"https" if https else b"http"
    if forwarded in ("x-forwarded", "both"):
        prior = b", ".join(headers.getRawHeaders(b"x-forwarded-for", ()))
        ip = client_ip.encode("latin-1")
        out = [(n, v) for n, v in out if n.lower() != b"x-forwarded-for"]
        out.append((b"x-forwarded-for", prior + b", " + ip if prior else ip))
        out.append((b"x-forwarded-proto", proto))
        out.append((b"x-forwarded-host", host))
    if forwarded in ("forwarded", "both"):
        element = f"for={_forwarded_for(client_ip)};proto={proto.decode()};host=\"{host.decode('latin-1')}\""
        prior = b", ".join(headers.getRawHeaders(b"forwarded", ()))
        out = [(n, v) for n, v in out if n.lower() != b"forwarded"]
        value = element.encode("latin-1")
        out.append((b"forwarded", prior + b", " + value if prior else value))
    return out


def _response_headers(headers: Sequence[tuple[bytes, bytes]], keep_upgrade: bool) -> list[tuple[bytes, bytes]]:
    """A backend response's end-to-end headers (Content-Length kept: it frames the front too)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    drop = (HOP_BY_HOP - {b"content-length", b"host"}) | tokens
    if keep_upgrade:
        drop -= {b"connection", b"upgrade"}
    return [(n, v) for n, v in headers if n not in drop]


@implementer(IPushProducer)
class _PauseBoth:
    """Registered with one transport; pauses and resumes another (a front's reading)."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.resumeProducing()


class _TunnelFront:
    """The front half of a 101 tunnel: what the client sends goes to the backend socket."""

    def __init__(self, exchange: HttpExchange) -> None:
        self.exchange = exchange

    def dataReceived(self, data: bytes) -> None:
        connection = self.exchange.connection
        if connection is not None and connection.transport is not None:
            connection.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        connection, self.exchange.connection = self.exchange.connection, None
        if connection is not None:
            connection.exchange = None
            if connection.transport is not None:
                connection.transport.loseConnection()


class HttpExchange:
    """One request: dial (or reuse) a backend connection, stream the request, relay the response."""

    connection: BackendConnection | None = None
    front_done = False
    responding = False
    finished = False
    front_gone = False
    sent_body = False
    retried = False
    failure: tuple[int, str] | None = None
    resume_backend = False
    body_file: Any = None

    def __init__(
        self, pools: Callable[[], list[BackendPool]], request: Any, head: tuple[bytes, bytes],
        length: int | None, client: Any, https: bool, forwarded: str | None, max_body: int | None,
        route_name: str, on_done: Callable[[HttpExchange], None] | None = None,
        classified: Any = None,
    ) -> None:
        self.classified = classified
        self.request = request
        self.route_name = route_name
        self.on_done = on_done
        self.method = head[0].upper()
        self.is_h2 = hasattr(request.channel, "streamID")
        tokens = _connection_tokens(request.requestHeaders)
        self.upgrade = (not self.is_h2 and b"upgrade" in tokens
                        and request.requestHeaders.hasHeader(b"upgrade"))
        self.max_body = max_body
        self.received = 0
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.queued: list[Any] = []
        self.front_paused: _PauseBoth | None = None
        self.client_ip = peer_ip(client)
        self.target = _origin_form(head[1])
        self.headers = backend_headers(request, length, self.method, self.upgrade, forwarded,
                                       self.client_ip, https)
        self.chunked = length is None
        self.pools = pools()
        request.notifyFinish().addErrback(self._front_lost)
        request.defaultContentType = None
        if max_body is not None and length is not None and length > max_body:
            self._fail(413, "request body too large", f"{length} bytes, max_body {max_body}", "body_too_large")
            return
        if not self.pools:
            self._fail(503, "no backend up", "every backend of this route is down", refusal.NO_BACKEND_UP)
            return
        self._dial(0)

    # -- the backend connection ---------------------------------------------

    def _dial(self, index: int) -> None:
        pool = self.pools[index]
        if self.classified is not None:
            self.classified.dialing(pool.name)
        connection = pool.take()
        if connection is not None:
            self._connected(connection)
            return
        pool.dial().addCallbacks(self._connected, self._dial_failed, errbackArgs=(index,))

    def _dial_failed(self, reason: Failure, index: int) -> None:
        if self.finished or self.front_gone:
            return
        if index + 1 < len(self.pools):
            self._dial(index + 1)
            return
        names = ", ".join(p.name for p in self.pools)
        self._fail(502, "backend unreachable", f"{names}: {reason.getErrorMessage()}",
                   refusal.BACKEND_UNREACHABLE)

    def _connected(self, connection: BackendConnection) -> None:
        if self.finished or self.front_gone:
            connection.pool.release(connection)  # nothing was sent on it
            return
        self.connection = connection
        connection.exchange = self
        if self.classified is not None:
            self.classified.connected()
        connection.send_head(self.method, self.target, self.headers, self.chunked)
        if self.body_file is not None:
            self._send_file(connection)
            return
        for chunk in self.pending:
            self._send_body(chunk)
        self.pending, self.pending_size = [], 0
        if self.front_done:
            self._end_request()
        else:
            if self.front_paused is None:
                self.front_paused = _PauseBoth(self._front_producer())
            connection.transport.registerProducer(self.front_paused, True)  # type: ignore[union-attr]
            self.front_paused.resumeProducing()

    def front_file(self, body: Any) -> None:
        """The whole body, already spooled by twisted.web (routing without FAST_PATHS): sent
        from the file with FileSender's backpressure once the backend is connected."""
        self.body_file = body
        self.sent_body = True
        connection = self.connection
        if connection is not None:  # connected at once (an idle pooled connection)
            if self.front_paused is not None:
                connection.transport.unregisterProducer()  # type: ignore[union-attr]
                self.front_paused.resumeProducing()
                self.front_paused = None
            self._send_file(connection)

    def _send_file(self, connection: BackendConnection) -> None:
        assert self.body_file is not None
        sent = FileSender().beginFileTransfer(self.body_file, connection.transport)

        def sent_all(_: object) -> None:
            self.body_file = None
            if self.front_done and self.connection is connection:
                self._end_request()

        sent.addCallbacks(sent_all, lambda _: None)

    def _front_producer(self) -> Any:
        channel = self.request.channel
        return channel if self.is_h2 else channel.transport

    def _send_body(self, data: bytes) -> None:
        if data and self.connection is not None:
            self.sent_body = True
            self.connection.send_body(data)

    def _end_request(self) -> None:
        connection = self.connection
        if connection is None:
            return
        if self.front_paused is not None:
            connection.transport.unregisterProducer()  # type: ignore[union-attr]
            self.front_paused.resumeProducing()
            self.front_paused = None
        connection.end_request()

    # -- the front request's body ---------------------------------------------

    def front_data(self, data: bytes) -> None:
        """A chunk of the request body from the front."""
        if self.finished:
            return
        self.received += len(data)
        if self.max_body is not None and self.received > self.max_body:
            self._fail(413, "request body too large", f"over max_body {self.max_body}", "body_too_large")
            return
        if self.connection is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT and self.front_paused is None:
                self.front_paused = _PauseBoth(self._front_producer())
                self.front_paused.pauseProducing()
            return
        self._send_body(data)

    def front_complete(self) -> None:
        """The front request is complete (its body too): end ours, then relay the response."""
        self.front_done = True
        if self.finished:
            if self.failure is not None:
                self._answer(*self.failure)
            return
        if self.connection is not None and self.body_file is None:
            self._end_request()
        queued, self.queued = self.queued, []
        if self.resume_backend and self.connection is not None:
            self.connection.transport.resumeProducing()  # type: ignore[union-attr]
        for method, args in queued:
            method(*args)

    # -- the backend's response ----------------------------------------------

    def backend_response(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The backend's response head: relayed once the front request is complete."""
        if not self.front_done:
            self._queue(self.backend_response, status, reason, headers)
            return
        self.responding = True
        request = self.request
        request.setResponseCode(status, reason or None)
        add = request.responseHeaders.addRawHeader
        for name, value in _response_headers(headers, False):
            add(name, value)
        if self.connection is not None and not self.front_gone:
            request.registerProducer(self.connection.transport, True)

    def backend_data(self, data: bytes) -> None:
        if not self.front_done:
            self._queue(self.backend_data, data)
        elif not self.front_gone:
            self.request.write(data)

    def backend_end(self) -> None:
        if not self.front_done:
            self._queue(self.backend_end)
        else:
            self._finish()

    def _queue(self, method: Any, *args: Any) -> None:
        """Hold a response event until the front request is complete; pause the backend meanwhile."""
        self.queued.append((method, args))
        connection = self.connection
        if connection is not None and connection.transport is not None:
            connection.transport.pauseProducing()  # type: ignore[attr-defined]
            self.resume_backend = True

    def _finish(self) -> None:
        self.finished = True
        request = self.request
        connection, self.connection = self.connection, None
        if not self.front_gone:
            if request.producer is not None:
                request.unregisterProducer()
            request.finish()
        if connection is not None:
            connection.done()
        self._done_hook()

    def backend_lost(self, reason: Failure) -> None:
        """The backend connection closed or broke before the response ended."""
        connection, self.connection = self.connection, None
        if self.finished or self.front_gone:
            return
        if (connection is not None and connection.reused and not self.responding
                and not self.sent_body and not self.retried and self.front_done):
            self.retried = True  # a kept-alive connection the backend had just closed
            log.debug("retrying {method} on a new connection to {backend}",
                      method=self.method, backend=connection.pool.name)
            self.pools = [connection.pool] + [p for p in self.pools if p is not connection.pool]
            self._dial(0)
            return
        why = reason.getErrorMessage()
        if self.responding:
            log.info("backend closed mid-response for {route}: {why}", route=self.route_name, why=why)
            self.finished = True
            self._abort_front()
            self._done_hook()
            return
        name = connection.pool.name if connection is not None else "backend"
        self._fail(502, "backend unreachable", f"{name} closed before responding: {why}",
                   refusal.BACKEND_UNREACHABLE)

    def backend_switched(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                         trailing: bytes) -> None:
        """The backend answered 101: the front connection becomes a tunnel to it."""
        request = self.request
        if not self.upgrade or self.is_h2 or self.front_gone or not self.front_done:
            self._fail(502, "bad backend response", "backend switched protocols unasked")
            return
        self.responding = True
        self.finished = True
        channel = request.channel
        lines = [b"HTTP/1.1 101 Switching Protocols"]
        lines += [n + b": " + v for n, v in _response_headers(headers, True)]
        channel.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        front = _TunnelFront(self)
        early = channel.take_over(front)
        connection = self.connection
        assert connection is not None
        request.registerProducer(connection.transport, True)
        connection.transport.registerProducer(_PauseBoth(channel.transport), True)  # type: ignore[union-attr]
        channel.transport.resumeProducing()
        if trailing:
            channel.transport.write(trailing)
        if early:
            connection.transport.write(early)  # type: ignore[union-attr]
        self._done_hook()

    def backend_tunnel(self, data: bytes) -> None:
        transport = self.request.channel.transport
        if transport is None:
            return
        if data:
            transport.write(data)
        else:
            transport.loseConnection()

    # -- endings ----------------------------------------------------------------

    def _front_lost(self, reason: Failure) -> None:
        self.front_gone = True
        connection, self.connection = self.connection, None
        if connection is not None and not connection.switched:
            connection.abort()
        if not self.finished:
            self.finished = True
            self._done_hook()

    def _done_hook(self) -> None:
        if self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done(self)

    def _abort_front(self) -> None:
        channel = self.request.channel
        if self.is_h2:
            channel.abortConnection()
        elif channel.transport is not None:
            channel.transport.abortConnection()

    def fail(self, status: int, reason: str, detail: str = "") -> None:
        """End this exchange with ``status`` (a worker vanished: 503), or cut it if already answering."""
        if self.finished:
            return
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abort()
        if self.responding:
            log.info("{route}: {detail}; response cut", route=self.route_name, detail=detail or reason)
            self.finished = True
            self._abort_front()
            self._done_hook()
            return
        self._fail(status, reason, detail)

    def _fail(self, status: int, reason: str, detail: str = "", why: str | None = None) -> None:
        """Answer ``status`` and ``reason`` (generic), log one line with ``detail``; now, or
        when the front request is complete."""
        if self.finished:
            return
        self.finished = True
        why = why or refusal.reason_name(status)
        classified = self.classified
        mux_log = getattr(getattr(classified, "mux", None), "log", None)
        fields = {"peer": self.client_ip, "route": self.route_name, "why": why, "status": status,
                  "reason": f"{reason} ({detail})" if detail else reason,
                  "method": self.method.decode("latin-1")}
        text = "refused {peer} protocol=http route={route} {why} (status {status}): {reason} [{method}]"
        if mux_log is not None:
            mux_log.emit("refused", text, **fields)
        else:
            log.info(text, **fields)
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abort()
        if self.front_done:
            self._answer(status, reason)
        else:
            self.failure = (status, reason)
            if not self.is_h2:  # do not wait for a body nobody will read
                self._refuse_raw(status, reason)
        self._done_hook()

    def _refuse_raw(self, status: int, reason: str) -> None:
        channel = self.request.channel
        preamble = getattr(self.request, "portmux_preamble", None)
        if channel.transport is not None and preamble is not None:
            self.front_gone = True
            channel.transport.write(http_protocol.refuse(preamble, status, reason))
            channel.transport.loseConnection()

    def _answer(self, status: int, reason: str) -> None:
        request = self.request
        if self.front_gone or request.finished:
            return
        from twisted.web.http import RESPONSES

        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        phrase = RESPONSES.get(status, b"Error").decode("latin-1")
        body = f"{status} {phrase}: {reason}\n".encode("utf-8", "replace")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


__all__ = ["FORWARDED_STYLES", "HOP_BY_HOP", "HttpExchange", "backend_headers"]
