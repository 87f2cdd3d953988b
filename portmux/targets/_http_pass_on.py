# -*- test-case-name: tests.daemon.test_group_channel,tests.daemon.test_group_keepalive -*-
"""A kept-alive HTTP/1 connection whose later request belongs to a whole-connection handoff target.

In a process group's child, a worker's URL prefix is a route to the parent
(portmux.daemon.group_channel).  When a later request on a connection this
process serves per request asks for one, and nothing earlier is still owed to the
client, the socket goes up exactly as a fresh connection would: with that
request's head as it arrived and every byte read after it, so the receiver routes
it as its own first request.  Earlier answers still unsent are waited for (up to
``SENT_WAIT`` s); a connection that cannot move (HTTP/2, TLS-terminated) keeps
today's 421.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from portmux import _twisted
from portmux.core.mux import Classified
from portmux.protocols import http as http_protocol
from portmux.targets.handoff import DetachError, PendingHandoff, socket_of

log = Logger(namespace="portmux")

SENT_WAIT = 10.0
"""Seconds the earlier answers on the connection may take to be sent before the request gets 421."""
POLL = 0.005
"""Seconds between looks at whether those answers are sent."""
MISDIRECTED = 421


def why_not(request: Any, connection: Any) -> str | None:
    """Why ``request``'s connection cannot be passed on from this request (None: it can)."""
    channel = request.channel
    if not hasattr(channel, "pass_on"):
        return "an HTTP/2 stream shares its connection"
    if connection is None:
        return "the connection is not known"
    try:
        socket_of(connection.transport)
    except DetachError as error:
        return f"its socket cannot move ({error})"
    if channel.requests != [request]:
        return "an earlier request is still being answered"
    return None


def pass_on(request: Any, route: Any, target: Any, dispatcher: Any) -> PassingOn | None:
    """Move ``request``'s connection to ``target`` (a handoff group) from this request on.

    Returns the object RoutedRequest treats as the request's exchange, or None (the
    reason kept on the request for the 421's log line).
    """
    connection = dispatcher.connection_of(request)
    reason = why_not(request, connection)
    if reason is not None:
        request.portmux_not_passed_on = reason
        return None
    return PassingOn(request, route, target, connection)


class PassingOn:
    """One connection leaving at a request: wait until earlier answers are sent, then hand off."""

    finished = False

    def __init__(self, request: Any, route: Any, target: Any, connection: Any) -> None:
        self.request = request
        self.route = route
        self.target = target
        self.connection = connection
        self.pending: PendingHandoff | None = None
        self.late = b""
        self.closed = False
        self._timer: Any = None
        self._watch = _twisted.UnsentWatch(connection.transport)
        request.portmux_passed_on = True  # logged by the process it goes to, not here
        # The receiver answers an Expect: 100-continue itself (it reads this head again).
        request.requestHeaders.removeHeader(b"expect")
        self.data = request.channel.pass_on(self)
        reactor = connection.reactor
        self._deadline = reactor.seconds() + SENT_WAIT
        self._check()

    # What RoutedRequest asks of an exchange: nothing reaches it, the bytes left with the socket.
    def front_data(self, data: bytes) -> None:
        """Unused: the channel parses nothing after ``pass_on`` (its body is in ``data``)."""

    def front_file(self, body: Any) -> None:
        """Unused: the request's body bytes travel with the socket."""

    def front_complete(self) -> None:
        """Unused: the receiver reads the request again."""

    def late_data(self, data: bytes) -> None:
        """Bytes read after reading stopped (a transport that delivers anyway)."""
        if self.pending is not None:
            self.pending.late += data
        else:
            self.late += data

    def connection_lost(self) -> None:
        self.closed = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self.pending is not None:
            self.pending.closed = True

    def _check(self) -> None:
        self._timer = None
        if self.closed:
            return
        reactor = self.connection.reactor
        if self._watch.all_sent():
            self._hand_off()
        elif reactor.seconds() >= self._deadline:
            self._misdirected(f"the earlier answers were not sent within {SENT_WAIT:g} s")
        else:
            self._timer = reactor.callLater(POLL, self._check)

    def _hand_off(self) -> None:
        original = self.connection
        preamble = getattr(self.request, "portmux_preamble", None) or original.preamble
        moving = Classified(original.sniffer, original.transport, self.data + self.late,
                            preamble.replace(consumed=0), original.peer, self.route, original.mux)
        self.late = b""
        self.pending = pending = PendingHandoff(moving, self.target, self.route.name)
        pending.counted = False  # the connection was counted on its first route, not this one
        pending.next()

    def _misdirected(self, reason: str) -> None:
        """Answer this request 421 (nothing else is owed) and close, with one log line."""
        self.closed = True
        transport = self.connection.transport
        preamble = getattr(self.request, "portmux_preamble", None) or self.connection.preamble
        log.info("http request for {host}{path} matched whole-connection route {route}: 421 ({reason})",
                 host=preamble.host or "", path=preamble.path or "", route=self.route.name, reason=reason)
        transport.write(http_protocol.refuse(
            preamble, MISDIRECTED, "this host and path are served per connection; reconnect"))
        transport.loseConnection()


__all__ = ["SENT_WAIT", "PassingOn", "pass_on", "why_not"]
