# -*- test-case-name: tests.core.test_sniff_pressure,tests.core.test_limits -*-
"""Room for classifiable clients under a flood of connections that send nothing (or trickle).

A flood from many source addresses (no per-source cap bites) that opens connections
and sends nothing fills ``max_connections`` with connections still being sniffed,
and legitimate clients wait until the preamble timeout frees places.  SniffPressure
keeps each listener's sniffing connections oldest first (a dict in insertion order,
one insert and one pop per connection) and, when a new connection arrives

- while its listener already holds ``max_sniffing`` sniffing connections, or
- when admitting it would reach the global or the listener's ``max_connections`` mark
  (where the listening ports would pause),

closes the oldest sniffing connection: at ``max_sniffing`` whatever its age (since
``max_sniffing`` newer connections arrived after it), at the mark only one that has
waited at least ``evict_sniffing_after`` seconds (the grace that keeps a few fresh
clients from being closed before their first bytes are read).  Classified
connections are never evicted.  When the mark is reached and every sniffer is
still within its grace, the ports pause as before and one timer (per multiplexer,
not per connection) evicts the oldest once it is stale, so accepting resumes long
before the preamble timeout.

Under such a flood every evicted holder reconnects at once, so portmux accepts and
evicts thousands of connections a second.  That churn is kept cheap: a sniffer
that sent nothing is reset (no refusal to read, no FIN handshake, no TIME_WAIT),
one with a partial request still gets its protocol's refusal (HTTP 408); and while
evicting, each listening port accepts at most ``PRESSURE_BATCH`` connections per
readiness event (Twisted grows its batch by 20 per full one, to hundreds), so one
reactor iteration is a short accept batch and the classified connections' reads
(the legitimate clients' requests among them) are served between batches.
"""

from __future__ import annotations

from typing import Any, Protocol

from portmux.core.limits import Admission, ListenerGate

EVICTED_REASON = "closed to make room: still unclassified under connection pressure"

PRESSURE_BATCH = 16
"""Connections a listening port accepts per readiness event while sniffers are evicted."""


class Sniffer(Protocol):
    """What SniffPressure needs of a sniffing connection (core/mux.py's SniffingProtocol)."""

    gate: ListenerGate | None
    waiting: dict[Any, float] | None

    def evict(self, reason: str) -> None: ...


class SniffPressure:
    """Each listener's sniffing connections, oldest first; evicts stale ones at the caps."""

    def __init__(self, reactor: Any, admission: Admission) -> None:
        self.reactor = reactor
        self.admission = admission
        self._waiting: dict[int, tuple[ListenerGate | None, dict[Any, float]]] = {}
        """id(gate) → (gate, its sniffing connections → the time each was admitted)."""
        self._relief: Any = None
        self._batching: Any = None
        """The call (after the current accept batch) that shrinks the ports' next batches."""
        self.evicted = 0
        """Sniffing connections closed to make room, since start."""

    def sniffing_cap(self, gate: ListenerGate | None) -> int:
        """The listener's ``max_sniffing`` (0: none): the setting, or half its connection cap."""
        limits = self.admission.limits
        if limits.max_sniffing:
            return limits.max_sniffing
        cap = limits.max_connections
        own = gate.max_connections if gate is not None else 0
        if own and (not cap or own < cap):
            cap = own
        return max(1, cap // 2) if cap else 0

    def make_room(self, gate: ListenerGate | None) -> None:
        """Make room for a new connection on ``gate``'s listener before Admission.opened counts it.

        At ``max_sniffing`` the listener's oldest sniffer goes, whatever its age: it
        has seen ``max_sniffing`` newer connections arrive, so the sniffers keep well
        away from the ``max_connections`` mark (where accept batches shrink and the
        ports pause).  Taking the last place under a mark evicts the oldest sniffer
        older than the grace, so the ports do not pause; with none that old they pause
        and a relief timer comes back when the oldest is.  An eviction uncounts at once.
        """
        grace = self.admission.limits.evict_sniffing_after
        if not grace:
            return
        entry = self._waiting.get(id(gate))
        if entry is not None and entry[1]:
            waiting = entry[1]
            cap = self.sniffing_cap(gate)
            if cap and len(waiting) >= cap:
                self._evict_oldest(waiting, float("inf"))
                return
        if self.admission.free(gate) <= 1:
            now = self.reactor.seconds()
            if not self._evict_at_mark(gate, now - grace):
                self._schedule_relief(now, grace)

    def track(self, sniffer: Sniffer, gate: ListenerGate | None) -> None:
        """``sniffer`` was admitted on ``gate``'s listener: it is sniffing, newest of all."""
        entry = self._waiting.get(id(gate))
        if entry is None:
            entry = self._waiting[id(gate)] = (gate, {})
        waiting = entry[1]
        waiting[sniffer] = self.reactor.seconds()
        sniffer.waiting = waiting

    def _evict_at_mark(self, gate: ListenerGate | None, stale_before: float) -> bool:
        """A place under the mark ``gate`` is reaching: its listener's oldest stale sniffer,
        else (at the global mark) any listener's."""
        entry = self._waiting.get(id(gate))
        if entry is not None and entry[1] and self._evict_oldest(entry[1], stale_before):
            return True
        if gate is not None and gate.max_connections and gate.max_connections - gate.open <= 1:
            return False  # the listener's own mark: only its own sniffers make room there
        oldest = self._oldest_anywhere()
        return oldest is not None and self._evict_oldest(oldest, stale_before)

    def _oldest_anywhere(self) -> dict[Any, float] | None:
        """The sniffing set (of any listener) whose first connection has waited longest."""
        heads = [(next(iter(w.values())), i) for i, (_g, w) in enumerate(self._waiting.values()) if w]
        if not heads:
            return None
        return list(self._waiting.values())[min(heads)[1]][1]

    def _evict_oldest(self, waiting: dict[Any, float], stale_before: float) -> bool:
        """Close ``waiting``'s oldest connection if it was admitted before ``stale_before``."""
        oldest = next(iter(waiting))
        if waiting[oldest] > stale_before:
            return False
        del waiting[oldest]
        oldest.waiting = None
        self.evicted += 1
        oldest.evict(EVICTED_REASON)
        if self._batching is None:  # Twisted resets the batch size when this batch ends
            self._batching = self.reactor.callLater(0, self._small_batches)
        return True

    def _small_batches(self) -> None:
        """Accept at most PRESSURE_BATCH connections per event on every port (see above)."""
        self._batching = None
        admission = self.admission
        for ports in [admission.extra_ports, *(gate.ports for gate in admission.gates)]:
            for port in ports:
                batch = getattr(port, "numberAccepts", None)
                if isinstance(batch, int) and batch > PRESSURE_BATCH:
                    port.numberAccepts = PRESSURE_BATCH

    def _schedule_relief(self, now: float, grace: float) -> None:
        """The ports pause with only fresh sniffers: come back when the oldest is stale."""
        oldest = self._oldest_anywhere()
        if oldest is not None:
            self._relieve_at(now, next(iter(oldest.values())) + grace)

    def _relieve_at(self, now: float, when: float) -> None:
        if self._relief is None:
            self._relief = self.reactor.callLater(max(0.0, when - now), self._relieve)

    def _relieve(self) -> None:
        """Ports still paused at a mark that sniffers hold: evict the oldest stale one (per mark)."""
        self._relief = None
        self._waiting = {key: entry for key, entry in self._waiting.items() if entry[1]}
        grace = self.admission.limits.evict_sniffing_after
        if not grace or not self._waiting:
            return
        now = self.reactor.seconds()
        stale_before = now - grace
        fresh: list[dict[Any, float]] = []
        if self.admission.paused:
            oldest = self._oldest_anywhere()
            if oldest is not None and not self._evict_oldest(oldest, stale_before):
                fresh.append(oldest)
        for gate, waiting in list(self._waiting.values()):
            if gate is not None and gate.paused and waiting and not self._evict_oldest(waiting, stale_before):
                fresh.append(waiting)
        if fresh:
            self._relieve_at(now, min(next(iter(w.values())) for w in fresh) + grace)

    def stop(self) -> None:
        """Cancel a pending relief and batch sizing (the multiplexer stops)."""
        for call in (self._relief, self._batching):
            if call is not None and call.active():
                call.cancel()
        self._relief = self._batching = None
