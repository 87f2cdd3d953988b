# -*- test-case-name: tests.targets.test_proxy_timeouts -*-
"""Timeouts of a connected proxy pair: server response, tunnel/idle inactivity, client_fin/server_fin.

The proxy's legs count their reads (one integer increment each); a ``PairWatch``
holds one reactor timer per pair and, when it fires, looks at whether the counts
moved.  So a side is declared inactive between T and 2T after its last read,
and the data path pays no timer operation per read.  A pair that times out is
aborted both ways: its buffers may be stuck behind a peer that does not read, so
a graceful close could wait forever.
"""

from __future__ import annotations

from typing import Any, Protocol

from portmux.core import refusal
from portmux.core.limits import Timeouts
from portmux.protocols import refusal_bytes


class Leg(Protocol):
    """What the watch needs of a proxy leg."""

    transport: Any
    reads: int
    read_done: bool
    reset_passthrough: bool


def abort(transport: Any) -> None:
    """Close ``transport`` at once, dropping what it could not send."""
    if transport is None or not getattr(transport, "connected", True):
        return  # already gone (a TLS transport cannot be aborted twice)
    abort_connection = getattr(transport, "abortConnection", None)
    if abort_connection is not None:
        abort_connection()
    else:
        transport.loseConnection()


class PairWatch:
    """Watches one connected client/backend pair and closes it when a timeout expires."""

    __slots__ = (
        "_last", "_seen", "_timer", "back", "connection", "front", "limits", "log",
        "phase", "reactor", "timeouts",
    )

    def __init__(
        self, reactor: Any, log: Any, timeouts: Timeouts, front: Leg, back: Leg, connection: Any,
        http: bool,
    ) -> None:
        self.reactor = reactor
        self.log = log
        self.timeouts = timeouts
        self.front = front
        self.back = back
        self.connection = connection
        """(peer, preamble, backend name): what a timeout's log line and refusal need."""
        self._timer: Any = None
        self._seen = [0, 0]
        self._last = [0.0, 0.0]
        self.phase = ""
        self.limits: tuple[tuple[int, float, str], ...] = ()
        if http and timeouts.server_response:
            self._enter("response", ((1, timeouts.server_response, "server_response"),))
        else:
            self._enter_tunnel()

    # -- phases ---------------------------------------------------------------

    def _enter(self, phase: str, limits: tuple[tuple[int, float, str], ...]) -> None:
        """Start ``phase``: ``limits`` are (side, seconds, name); side 0 client, 1 backend, 2 both."""
        self.phase = phase
        self.limits = tuple(limit for limit in limits if limit[1] > 0)
        now = self.reactor.seconds()
        self._seen = [self._reads(0), self._reads(1), self._reads(2)]
        self._last = [now, now, now]
        self._arm(min((limit[1] for limit in self.limits), default=0.0))

    def _enter_tunnel(self) -> None:
        t = self.timeouts
        if t.tunnel:
            self._enter("tunnel", ((2, t.tunnel, "tunnel"),))
        else:
            self._enter("idle", ((0, t.client_idle, "client_idle"), (1, t.server_idle, "server_idle")))

    def half_closed(self) -> None:
        """A FIN was passed on: the half-closed pair now runs on client_fin/server_fin."""
        if self.phase == "":
            return
        t = self.timeouts
        limits = []
        if self.front.read_done:  # the client is done: wait for the backend
            limits.append((1, t.server_fin, "server_fin"))
        if self.back.read_done:  # the backend is done: wait for the client
            limits.append((0, t.client_fin, "client_fin"))
        self._cancel()
        self._enter("fin", tuple(limits))

    def stop(self) -> None:
        """The pair closed: forget it."""
        self.phase = ""
        self._cancel()

    # -- the timer --------------------------------------------------------------

    def _reads(self, side: int) -> int:
        if side == 0:
            return self.front.reads
        if side == 1:
            return self.back.reads
        return self.front.reads + self.back.reads

    def _arm(self, delay: float) -> None:
        if delay > 0:
            self._timer = self.reactor.callLater(delay, self._fire)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self) -> None:
        self._timer = None
        if self.phase == "":
            return
        now = self.reactor.seconds()
        if self.phase == "response":
            if self.back.reads:
                self._enter_tunnel()
            else:
                self._expire(self.limits[0])
            return
        wait = float("inf")
        for limit in self.limits:
            side, seconds, _ = limit
            count = self._reads(side)
            if count != self._seen[side]:
                self._seen[side], self._last[side] = count, now
            remaining = self._last[side] + seconds - now
            if remaining <= 0:
                self._expire(limit)
                return
            wait = min(wait, remaining)
        self._arm(wait)

    def _expire(self, limit: tuple[int, float, str]) -> None:
        """Log one (rate-limited) line, answer an HTTP client still waiting, abort both sides."""
        _, seconds, name = limit
        peer, preamble, backend = self.connection
        self.phase = ""
        self.log.emit(
            "timeout",
            "closed proxied connection {peer} -> {backend}: {name} timeout ({seconds:g} s)",
            peer=peer, backend=backend, name=name, seconds=seconds,
        )
        client = self.front.transport
        if name == "server_response" and client is not None:
            data = refusal_bytes(preamble, refusal.GATEWAY_TIMEOUT, f"backend sent nothing in {seconds:g} s")
            if data:
                client.write(data)
            client.loseConnection()  # flush the answer
            self.back.reset_passthrough = False  # our own abort must not cut the answer short
            abort(self.back.transport)
            return
        abort(self.back.transport)
        abort(client)
