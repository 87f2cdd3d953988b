# -*- test-case-name: tests.core.test_limits -*-
"""Connection admission: global and per-listener caps that pause accepting, per-source caps.

At the global or a listener's ``max_connections`` mark the listening ports stop
reading (no accept(2), so the kernel's backlog holds new clients instead of portmux
accepting and closing them) and resume once a connection ends.  Per source network
there is a cap on open connections and a token bucket on new ones; a connection
over either is closed at once, before any protocol object exists.
"""

from __future__ import annotations

import ipaddress
import resource
import socket
from dataclasses import dataclass, field
from typing import Any

FD_RESERVE = 64
"""Descriptors kept free for listeners, the control socket, logs and certificates."""


def automatic_max_connections() -> int:
    """A global cap that keeps portmux under its fd limit: two fds per proxied connection."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 2)


def _v4_network(ip: str, prefix: int) -> str | None:
    """``ip`` (dotted quad) itself at /32, else its /``prefix`` network as ``a.b.c.d/n``."""
    if prefix >= 32:
        return ip
    try:
        number = int.from_bytes(socket.inet_aton(ip), "big")
    except OSError:
        return None
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return f"{socket.inet_ntoa((number & mask).to_bytes(4, 'big'))}/{prefix}"


@dataclass(frozen=True)
class Limits:
    """Admission limits; 0 means "no limit" everywhere."""

    max_connections: int = 0
    max_per_source: int = 0
    new_per_source_rate: float = 0.0
    """New connections per second per source network (token bucket refill rate)."""
    new_per_source_burst: int = 0
    """Bucket size; 0 means ``max(1, 2 × rate)``."""
    source_prefix_v4: int = 32
    source_prefix_v6: int = 64
    max_sniffing: int = 0
    """Connections still being classified per listener; 0: half the listener's connection cap."""
    evict_sniffing_after: float = 0.25
    """Past ``max_sniffing`` the oldest connection still being classified is closed; at a
    ``max_connections`` mark, the oldest one this old rather than pausing (0: neither;
    core/sniff_pressure.py)."""


@dataclass(frozen=True)
class Timeouts:
    """Timeouts after classification, in seconds; 0 turns one off.

    ``tunnel`` is the inactivity limit of a connected proxy pair (both ways quiet);
    when it is 0, ``client_idle``/``server_idle`` apply to each side instead.
    ``client_idle`` is also the in-process HTTP server's keep-alive idle timeout.
    ``server_response`` bounds the wait for a proxied HTTP backend's first byte.
    ``client_fin``/``server_fin`` bound a half-closed proxy pair (HAProxy's names).
    """

    connect: float = 5.0
    client_idle: float = 60.0
    server_idle: float = 0.0
    tunnel: float = 3600.0
    server_response: float = 60.0
    client_fin: float = 30.0
    server_fin: float = 30.0


@dataclass
class ListenerGate:
    """One listener's own cap and the ports it pauses."""

    max_connections: int = 0
    open: int = 0
    ports: list[Any] = field(default_factory=list)
    paused: bool = False


class _Bucket:
    """A token bucket: ``tokens`` at ``stamp``."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Admission:
    """Counts open connections and decides, at accept time, whether a new one may stay."""

    MAX_TRACKED_SOURCES = 100_000
    """Token buckets kept at most; full, idle buckets are forgotten first."""
    FIT_MARGIN = 1024
    """Below this many free places, accept batches are sized to the free places."""

    def __init__(self, reactor: Any, limits: Limits = Limits()) -> None:
        self.reactor = reactor
        self.limits = limits
        self.open = 0
        self.paused = False
        self.gates: list[ListenerGate] = []
        self.extra_ports: list[Any] = []
        """Ports opened by Multiplexer.listen, paused with the global mark too."""
        self._per_source: dict[Any, int] = {}
        self._buckets: dict[Any, _Bucket] = {}
        self.refused_sources = 0
        self.paused_times = 0
        self._fit_call: Any = None

    def gate(self, max_connections: int = 0) -> ListenerGate:
        """A new listener's gate, paused together with the others at the global mark."""
        gate = ListenerGate(max_connections)
        self.gates.append(gate)
        return gate

    # -- accept time ----------------------------------------------------------

    def source_key(self, ip: str | None) -> Any:
        """The source network ``ip`` is counted under (None: not counted, e.g. UNIX peers)."""
        if ip is None:
            return None
        limits = self.limits
        if not (limits.max_per_source or limits.new_per_source_rate):
            return None
        if ":" not in ip:  # IPv4 as the socket reports it: no ipaddress objects per accept
            return _v4_network(ip, limits.source_prefix_v4)
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        prefix = limits.source_prefix_v4 if address.version == 4 else limits.source_prefix_v6
        if prefix >= address.max_prefixlen:
            return ip
        return ipaddress.ip_network((address, prefix), strict=False)

    def refusal(self, source: Any) -> str | None:
        """Why a new connection from ``source`` may not stay, or None when it may."""
        if source is None:
            return None
        limits = self.limits
        if limits.max_per_source and self._per_source.get(source, 0) >= limits.max_per_source:
            return f"{limits.max_per_source} connections open from {source} (max_per_source)"
        rate = limits.new_per_source_rate
        if rate:
            burst = float(limits.new_per_source_burst or max(1.0, 2 * rate))
            now = self.reactor.seconds()
            bucket = self._buckets.get(source)
            if bucket is None:
                if len(self._buckets) >= self.MAX_TRACKED_SOURCES:
                    self._forget_full_buckets(now, rate, burst)
                bucket = self._buckets[source] = _Bucket(burst, now)
            else:
                bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
                bucket.stamp = now
            if bucket.tokens < 1.0:
                return f"more than {rate:g} new connections/s from {source} (new_per_source_rate)"
            bucket.tokens -= 1.0
        return None

    def _forget_full_buckets(self, now: float, rate: float, burst: float) -> None:
        """Drop buckets that have refilled (they hold nothing a fresh one would not)."""
        self._buckets = {
            key: b for key, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * rate < burst
        }
        if len(self._buckets) >= self.MAX_TRACKED_SOURCES:  # all busy: forget the oldest half
            keep = list(self._buckets.items())[len(self._buckets) // 2:]
            self._buckets = dict(keep)

    def opened(self, gate: ListenerGate | None, source: Any) -> None:
        """Count a connection that stays; pause listening at a mark."""
        self.open += 1
        if source is not None:
            self._per_source[source] = self._per_source.get(source, 0) + 1
        if gate is not None:
            gate.open += 1
            if gate.max_connections and gate.open >= gate.max_connections and not gate.paused:
                gate.paused = True
                self._pause(gate.ports)
        cap = self.limits.max_connections
        if cap and self.open >= cap and not self.paused:
            self.paused = True
            self.paused_times += 1
            self._pause(self._all_ports())
        if self._fit_call is None and self.free(gate) < self.FIT_MARGIN:
            # After this accept batch (before the reactor polls again), size the next ones.
            self._fit_call = self.reactor.callLater(0, self.fit_batches)

    def free(self, gate: ListenerGate | None) -> int:
        """Connections that may still be accepted on ``gate``'s ports (a large number: no cap)."""
        cap = self.limits.max_connections
        free = cap - self.open if cap else 1 << 30
        if gate is not None and gate.max_connections:
            free = min(free, gate.max_connections - gate.open)
        return free

    def fit_batches(self) -> None:
        """Accept at most as many connections per readiness event as there are free places.

        Twisted's TCP port accepts ``numberAccepts`` connections per event (100 and
        growing); past a mark the rest would be accepted only to be closed.
        """
        self._fit_call = None
        for gate, ports in [(None, self.extra_ports)] + [(g, g.ports) for g in self.gates]:
            free = max(1, self.free(gate))
            for port in ports:
                batch = getattr(port, "numberAccepts", None)
                if isinstance(batch, int) and batch > free:
                    port.numberAccepts = free

    def closed(self, gate: ListenerGate | None, source: Any) -> None:
        """A counted connection ended; resume listening below the marks."""
        self.open -= 1
        if source is not None:
            left = self._per_source.get(source, 1) - 1
            if left > 0:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)
        if gate is not None:
            gate.open -= 1
            if gate.paused and gate.open < gate.max_connections:
                gate.paused = False
                if not self.paused:
                    self._resume(gate.ports)
        if self.paused and self.open < self.limits.max_connections:
            self.paused = False
            for g in self.gates:
                if not g.paused:
                    self._resume(g.ports)
            self._resume(self.extra_ports)

    def over_cap(self, gate: ListenerGate | None) -> bool:
        """True when a connection accepted in the same accept batch is over a mark."""
        cap = self.limits.max_connections
        if cap and self.open >= cap:
            return True
        return bool(gate is not None and gate.max_connections and gate.open >= gate.max_connections)

    def set_limits(self, limits: Limits) -> None:
        """New limits (reload); ports paused under the old ones resume if now below."""
        self.limits = limits
        cap = limits.max_connections
        if not self.paused and cap and self.open >= cap:
            self.paused = True
            self.paused_times += 1
            self._pause(self._all_ports())
        elif self.paused and not (cap and self.open >= cap):
            self.paused = False
            for g in self.gates:
                if not g.paused:
                    self._resume(g.ports)
            self._resume(self.extra_ports)

    def stop(self) -> None:
        """Cancel a pending batch fit (the multiplexer stops)."""
        call, self._fit_call = self._fit_call, None
        if call is not None and call.active():
            call.cancel()

    def _all_ports(self) -> list[Any]:
        ports = list(self.extra_ports)
        for gate in self.gates:
            ports.extend(gate.ports)
        return ports

    @staticmethod
    def _pause(ports: list[Any]) -> None:
        for port in ports:
            stop = getattr(port, "stopReading", None)
            if stop is not None:
                stop()

    @staticmethod
    def _resume(ports: list[Any]) -> None:
        for port in ports:
            if getattr(port, "connected", True) is False:
                continue  # stopped listening meanwhile
            start = getattr(port, "startReading", None)
            if start is not None:
                start()
