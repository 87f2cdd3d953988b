# -*- test-case-name: tests.targets.test_http_hostile,tests.targets.test_http_proxy -*-
"""The front of per-request HTTP: a hardened HTTP/1.1 channel and a request that routes early.

``GuardedChannel`` is twisted.web's HTTPChannel with the request-smuggling and
resource defences reverse proxies apply: a head line with a bare LF or CR, an
obs-folded header, both Content-Length and Transfer-Encoding, more than one
Content-Length, a Transfer-Encoding other than ``chunked`` are refused with 400;
an oversized head with 431; a head not complete within the sniff preamble
timeout with 408. Each refusal is one log line, then the connection closes —
nothing ambiguous is ever passed on.

``RoutedRequest`` picks its route as soon as the head is known, so a proxied
request's body streams to the backend (``start_exchange``) instead of being
spooled whole by twisted.web; other requests behave as twisted.web's own.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from portmux import _twisted
from portmux.core import refusal
from portmux.core.preamble import Preamble
from portmux.protocols import http as http_protocol
from portmux.targets.http_channel import BoundedChannel

log = Logger(namespace="portmux")

_Channel: Any = BoundedChannel  # untyped Twisted bases: typed as Any so strict mypy checks our code only
_Request: Any = Request

PAYLOAD_TOO_LARGE = 413


class GuardedChannel(_Channel):  # type: ignore[misc]
    """A BoundedChannel (an HTTPChannel bounding pipelined answers) that refuses ambiguous
    or oversized request heads (see module doc); ``configure`` sets its limits."""

    totalHeadersSize = 1 << 30  # our own limits (431) are checked first
    maxHeaders = 1 << 30
    max_header_count = 500

    max_head = 16384
    head_timeout = 10.0
    portmux_preamble = Preamble(protocol="http")

    def __init__(self) -> None:
        super().__init__()
        self.MAX_LENGTH = self.max_head
        self._head_bytes = 0
        self._header_count = 0
        self._in_head = False
        self._head_timer: Any = None
        self._lengths: list[bytes] = []
        self._encodings: list[bytes] = []
        self._refused = False
        self._tunnel: Any = None
        self._head_lines: list[bytes] = []  # the current request's head lines, for pass_on
        self._handing: Any = None

    def configure(self, max_head: int, head_timeout: float, preamble: Preamble) -> None:
        """Head limits (431 over ``max_head`` bytes, 408 after ``head_timeout`` s) and the
        connection's preamble (for refusals in its protocol's words)."""
        self.max_head = self.MAX_LENGTH = max_head
        self.head_timeout = head_timeout
        self.portmux_preamble = preamble

    def take_over(self, protocol: Any) -> bytes:
        """Send every further read, and the connection's end, to ``protocol`` (a 101 tunnel).

        Returns the bytes already read and buffered after the upgrade request.
        """
        self._cancel_head_timer()
        self.setTimeout(None)
        self._tunnel = protocol
        return _twisted.drain_http_buffer(self)

    def request_head(self) -> tuple[bytes, bytes] | None:
        """(method, target) of the request whose head is being read, from its line as it arrived
        (public-API fallback of ``_twisted.request_head``)."""
        if not self._head_lines:
            return None
        parts = self._head_lines[0].split(b" ")
        return (parts[0], parts[1]) if len(parts) == 3 else None

    def pass_on(self, handing: Any) -> bytes:
        """Stop serving at the request whose head was just read: its socket is leaving.

        Returns that head's bytes as they arrived and every byte read after it;
        reading stops, and later reads and the connection's end go to ``handing``
        (``late_data``, ``connection_lost``).
        """
        self._handing = handing
        self.passed_on = True
        self.paused = True  # LineReceiver parses nothing more
        self._cancel_head_timer()
        self.setTimeout(None)
        if self.transport is not None:
            self.transport.pauseProducing()
        rest: bytes = self.clearLineBuffer()
        return b"\r\n".join(self._head_lines) + b"\r\n\r\n" + rest

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.dataReceived(data)
            return
        if self._handing is not None:
            self._handing.late_data(data)
            return
        if self._refused:
            return
        if data and self.line_mode and self._head_timer is None and self.head_timeout:
            self._head_timer = self.callLater(self.head_timeout, self._head_timed_out)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        self._head_bytes += len(line) + 2
        if self._head_bytes > self.max_head:
            self.refuse(refusal.TOO_LARGE, f"request head over {self.max_head} bytes")
            return
        if b"\n" in line or b"\r" in line:
            self.refuse(refusal.BAD_REQUEST, "bare LF or CR in the request head")
            return
        if not self._in_head:
            if line:
                self._in_head = True
                self._header_count = 0
                self._head_lines = [line]
        elif line[:1] in (b" ", b"\t"):
            self.refuse(refusal.BAD_REQUEST, "obsolete line folding in a header")
            return
        elif line:
            self._header_count += 1
            if self._header_count > self.max_header_count:
                self.refuse(refusal.TOO_LARGE, f"more than {self.max_header_count} header fields")
                return
            if not self._header_ok(line):
                return
            self._head_lines.append(line)
        else:
            self._in_head = False
            self._head_bytes = 0
            if not self._framing_ok():
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(refusal.TOO_LARGE, f"request head line over {self.max_head} bytes")

    def _header_ok(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        if not colon or name != name.strip(b" \t"):
            self.refuse(refusal.BAD_REQUEST, "malformed header name")
            return False
        lower = name.lower()
        if lower == b"content-length":
            self._lengths.append(value.strip(b" \t"))
        elif lower == b"transfer-encoding":
            self._encodings.append(value.strip(b" \t"))
        return True

    def _framing_ok(self) -> bool:
        """The body's framing is stated once, unambiguously (RFC 9112 §6)."""
        lengths, encodings = self._lengths, self._encodings
        self._lengths, self._encodings = [], []
        if lengths and encodings:
            reason = "both Content-Length and Transfer-Encoding"
        elif len(set(lengths)) > 1 or any(b"," in v for v in lengths):
            reason = "differing Content-Length values"
        elif len(lengths) > 1:
            reason = "duplicate Content-Length"
        elif lengths and not (lengths[0].isdigit() and lengths[0].isascii()):
            reason = "malformed Content-Length"
        elif len(encodings) > 1 or (encodings and encodings[0].lower() != b"chunked"):
            reason = "Transfer-Encoding other than a single chunked"
        else:
            return True
        self.refuse(refusal.BAD_REQUEST, reason)
        return False

    def allHeadersReceived(self) -> None:
        self._cancel_head_timer()
        super().allHeadersReceived()
        self._head_lines.clear()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.refuse(refusal.TIMEOUT, f"request head not complete within {self.head_timeout:g} s")

    def refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` in HTTP/1.1, log one line, and close."""
        if self._refused:
            return
        self._refused = True
        self._cancel_head_timer()
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info("http request refused ({status}) from {peer}: {reason}",
                 status=status, peer=getattr(peer, "host", peer), reason=reason)
        if self.transport is not None:
            self.transport.write(http_protocol.refuse(self.portmux_preamble, status, reason))
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_head_timer()
        if self._tunnel is not None:
            self._tunnel.connectionLost(reason)
        if self._handing is not None:
            self._handing.connection_lost()
        super().connectionLost(reason)


class RoutedRequest(_Request):  # type: ignore[misc]
    """A Site request routed once its head is known; proxied bodies stream, never spool."""

    exchange: Any = None
    body_length: int | None = None
    _decided = False

    def gotLength(self, length: int | None) -> None:
        self.body_length = length
        if not hasattr(self.channel, "streamID"):  # HTTP/1: the head is complete now
            self._decide()
        if self.exchange is None:
            super().gotLength(length)

    def _decide(self, head: tuple[bytes, bytes] | None = None, keep_content: bool = False) -> None:
        """Ask the Site's dispatcher for this request's route; a streaming target takes it now."""
        if self._decided:
            return
        head = head or _twisted.request_head(self)
        if head is None:
            recorded = getattr(self.channel, "request_head", None)  # GuardedChannel: its own record
            head = recorded() if recorded is not None else None
        if head is None:
            return  # routed later, in process(), after twisted.web buffered the body
        self._decided = True
        dispatcher = self.channel.site.resource
        route = dispatcher.route_for(self, head[1])
        start = getattr(getattr(route, "target", None), "start_exchange", None)
        if start is None:
            return
        self.exchange = start(self, route, head, self.body_length, dispatcher)
        if self.exchange is not None and not keep_content:
            self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if not self._decided and hasattr(self.channel, "streamID"):
            self._decide()
            if self.exchange is None and getattr(self, "content", None) is None:
                super().gotLength(self.body_length)
        if self.exchange is not None:
            self.exchange.front_data(data)
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        late = None
        if not self._decided:
            late = getattr(self, "content", None)  # routed only now: twisted.web buffered the body
            if late is not None:
                self.body_length = late.seek(0, 2)
                late.seek(0)
            self._decide((command, path), keep_content=late is not None)
            if self.exchange is None and getattr(self, "content", None) is None:
                super().gotLength(0)
        if self.exchange is None:
            super().requestReceived(command, path, version)
            return
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        if late is not None and self.body_length:
            self.exchange.front_file(late)
        self.exchange.front_complete()


__all__ = ["PAYLOAD_TOO_LARGE", "GuardedChannel", "RoutedRequest"]
