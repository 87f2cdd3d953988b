# -*- test-case-name: tests.targets.test_proxy_timeouts -*-
"""Timeouts of a connected proxy pair: server response, tunnel/idle inactivity, client_fin/server_fin.

The proxy's legs count their reads (one integer increment each); a ``PairWatch``
holds one reactor timer per pair and, when it fires, looks at whether the counts
moved.  So a side is declared inactive between T and 2T after its last read,
and the data path pays no timer operation per read.  A pair that times out is
aborted both ways: its buffers may be stuck behind a peer that does not read, so
a graceful close could wait forever.

What each phase watches is worked out once per route and set of timeouts
(``WatchPlan``), and a phase's first wait goes into a ``DeadlineQueue`` shared by
every pair waiting the same delay: no DelayedCall per connection, and most
connections end long before their first deadline.
"""

from __future__ import annotations

from typing import Any, Protocol

from portmux.core import refusal
from portmux.core.deadlines import DeadlineQueue
from portmux.core.limits import Timeouts
from portmux.protocols import refusal_bytes


class Leg(Protocol):
    """What the watch needs of a proxy leg (or a relayed pair's side)."""

    @property
    def transport(self) -> Any:
        """What to answer through and close (None once closed)."""
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


Limit = tuple[int, float, str]
"""(side, seconds, name): side 0 is the client, 1 the backend, 2 both."""
Phase = tuple[str, tuple[Limit, ...], float]
"""(name, the limits that are on, the shortest of them: the first wait; 0 for none)."""


def _phase(name: str, limits: tuple[Limit, ...]) -> Phase:
    on = tuple(limit for limit in limits if limit[1] > 0)
    return name, on, min((limit[1] for limit in on), default=0.0)


class WatchPlan:
    """The phases of a pair's watch for one set of timeouts, and the shared deadline queues.

    Built once per route and Timeouts value (ProxyTarget caches it), not per connection.
    """

    __slots__ = ("fin", "queues", "reactor", "response", "timeouts", "tunnel")

    def __init__(self, reactor: Any, timeouts: Timeouts) -> None:
        t = self.timeouts = timeouts
        self.reactor = reactor
        self.response = _phase("response", ((1, t.server_response, "server_response"),))
        if t.tunnel:
            self.tunnel = _phase("tunnel", ((2, t.tunnel, "tunnel"),))
        else:
            self.tunnel = _phase("idle", ((0, t.client_idle, "client_idle"),
                                          (1, t.server_idle, "server_idle")))
        server_fin: Limit = (1, t.server_fin, "server_fin")  # the client is done: wait for the backend
        client_fin: Limit = (0, t.client_fin, "client_fin")  # the backend is done: wait for the client
        self.fin = {  # keyed by (client done, backend done)
            (False, False): _phase("fin", ()),
            (True, False): _phase("fin", (server_fin,)),
            (False, True): _phase("fin", (client_fin,)),
            (True, True): _phase("fin", (server_fin, client_fin)),
        }
        self.queues: dict[float, DeadlineQueue[PairWatch]] = {}

    def queue(self, delay: float) -> DeadlineQueue[PairWatch]:
        """The queue every pair of this plan waiting ``delay`` seconds shares."""
        queue = self.queues.get(delay)
        if queue is None:
            queue = self.queues[delay] = DeadlineQueue(self.reactor, delay, PairWatch._fire)
        return queue


class PairWatch:
    """Watches one connected client/backend pair and closes it when a timeout expires."""

    __slots__ = (
        "_last", "_queue", "_seen", "_seen_back", "_seen_front", "_timer", "back", "backend",
        "front", "limits", "log", "peer", "phase", "plan", "preamble",
    )

    def __init__(
        self, plan: WatchPlan, log: Any, front: Leg, back: Leg, peer: Any, preamble: Any,
        backend: str, http: bool,
    ) -> None:
        self.plan = plan
        self.log = log
        self.front = front
        self.back = back
        self.peer = peer
        self.preamble = preamble
        self.backend = backend
        """The peer address, preamble and backend name: what a timeout's log line and refusal need."""
        self._timer: Any = None
        self._queue: DeadlineQueue[PairWatch] | None = None
        self._seen_front = self._seen_back = 0  # read counts when the phase began
        self._seen: list[int] | None = None  # per side, once a first wait ran out
        self._last: list[float] | None = None
        self.phase = ""
        self.limits: tuple[Limit, ...] = ()
        if http and plan.timeouts.server_response:
            self._enter(plan.response)
        else:
            self._enter(plan.tunnel)

    @property
    def timeouts(self) -> Timeouts:
        return self.plan.timeouts

    # -- phases ---------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        """Start ``phase``; its first wait goes into the plan's shared queue for that delay."""
        self.phase, self.limits, delay = phase
        self._seen_front, self._seen_back = self.front.reads, self.back.reads
        self._seen = self._last = None  # built if the phase's first wait runs out
        if delay > 0:
            queue = self._queue = self.plan.queue(delay)
            queue.add(self)

    def half_closed(self) -> None:
        """A FIN was passed on: the half-closed pair now runs on client_fin/server_fin."""
        if self.phase == "":
            return
        self._cancel()
        self._enter(self.plan.fin[(self.front.read_done, self.back.read_done)])

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

    def _cancel(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.discard(self)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self) -> None:
        self._timer = None
        self._queue = None  # the queue already forgot us
        if self.phase == "":
            return
        now = self.plan.reactor.seconds()
        if self.phase == "response":
            if self.back.reads:
                self._enter(self.plan.tunnel)
            else:
                self._expire(self.limits[0])
            return
        last, seen = self._last, self._seen
        if last is None or seen is None:  # the first wait (the shortest limit) ran out
            start = now - min(limit[1] for limit in self.limits)  # when the phase began
            last = self._last = [start, start, start]
            front, back = self._seen_front, self._seen_back
            seen = self._seen = [front, back, front + back]
        wait = float("inf")
        for limit in self.limits:
            side, seconds, _ = limit
            count = self._reads(side)
            if count != seen[side]:
                seen[side], last[side] = count, now
            remaining = last[side] + seconds - now
            if remaining <= 0:
                self._expire(limit)
                return
            wait = min(wait, remaining)
        self._timer = self.plan.reactor.callLater(wait, self._fire)  # a long-lived pair's next look

    def _expire(self, limit: Limit) -> None:
        """Log one (rate-limited) line, answer an HTTP client still waiting, abort both sides."""
        _, seconds, name = limit
        preamble = self.preamble
        self.phase = ""
        self.log.emit(
            "timeout",
            "closed proxied connection {peer} -> {backend}: {name} timeout ({seconds:g} s)",
            peer=describe_peer(self.peer), backend=self.backend, name=name, seconds=seconds,
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


def describe_peer(address: Any) -> str:
    """``host:port`` of an IP address, else its path or repr (for log lines)."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{getattr(address, 'port', '')}"
    return str(getattr(address, "name", address))
