# -*- test-case-name: tests.client.test_connect,tests.client.test_ssh,tests.control.test_server,tests.core.test_mux -*-
"""The sniffing protocol and the Multiplexer factory: probe → route → attach."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IListeningPort,
    ILoggingContext,
    IProtocol,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux._twisted import abort_now, local_port
from portmux.core import accounting, refusal
from portmux.core.deadlines import DeadlineQueue
from portmux.core.interfaces import IProbe, as_target
from portmux.core.limits import Admission, Limits, ListenerGate, Timeouts
from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.core.proxied import present_addresses
from portmux.core.ratelog import RateLimitedLog
from portmux.core.registered import RegisteredLayer
from portmux.core.routing import Match, Network, Route, Router, _in_networks, peer_ip
from portmux.core.sniff_pressure import SniffPressure
from portmux.core.stats import RouteCounters, Stats
from portmux.core.trace import log_trace
from portmux.protocols import proxyheader, refusal_bytes, tcpmux
from portmux.protocols.http import request_via

T = TypeVar("T")

log = Logger(namespace="portmux")

SILENT = Preamble(protocol="silent")
UNKNOWN = Preamble(protocol="unknown")


@dataclass(frozen=True)
class SniffSettings:
    """Bounds on classification: total deadline, byte cap, and the silence deadline.

    ``preamble_max_bytes`` is a hard cap: probes never see more than that many
    bytes, however the client's bytes were split into reads, so a verdict never
    depends on read boundaries and probe CPU per connection is bounded.  32 KiB
    holds real multi-record post-quantum ClientHellos (openssl's ~20 KB one).
    """

    preamble_timeout: float = 10.0
    preamble_max_bytes: int = 32768
    silence_timeout: float = 2.0
    trace: tuple[Network, ...] = ()
    """Client networks whose routing decisions are logged at debug level (core/trace.py)."""


class Classified:
    """One classified connection, handed to a target's ``attach``."""

    __slots__ = ("_sniffer", "buffered", "mux", "peer", "preamble", "route", "transport")

    def __init__(
        self,
        sniffer: SniffingProtocol,
        transport: ITransport,
        buffered: bytes,
        preamble: Preamble,
        peer: IAddress,
        route: Route,
        mux: Multiplexer,
    ) -> None:
        self._sniffer = sniffer
        self.transport = transport
        self.buffered = buffered
        self.preamble = preamble
        self.peer = peer
        self.route = route
        self.mux = mux

    @property
    def payload(self) -> bytes:
        """The bytes read so far that belong to the target (after the consumed prefix)."""
        consumed = self.preamble.consumed
        return self.buffered[consumed:] if consumed else self.buffered

    @property
    def reactor(self) -> Any:
        return self.mux.reactor

    def accept(self, text: str = "") -> None:
        """Send the protocol's positive answer, if it has one (TCPMUX ``+``)."""
        if self.preamble.protocol == "tcpmux":
            self.transport.write(tcpmux.accept_bytes(text))

    def refuse(self, status: int, reason: str, detail: str = "", why: str | None = None) -> None:
        """Send the protocol's refusal, log it, count it, and close.

        ``reason`` is what the client is told: short and generic. ``detail`` (backend
        names, addresses, errors) goes only to the log line. ``why`` is the
        protocol-neutral reason name (portmux.core.refusal); by default it follows
        from the status.
        """
        self.mux.stats.for_route(self.route.name).refused += 1
        self._sniffer.refuse(self.preamble, status, reason, route=self.route.name,
                             detail=detail, why=why)

    def dialing(self, backend: str) -> None:
        """A target started connecting to ``backend`` for this connection (access log, metrics)."""
        sniffer = self._sniffer
        sniffer.backend = backend
        sniffer.dialed_at = self.mux.reactor.seconds()

    def connected(self) -> None:
        """The backend named by ``dialing`` answered."""
        sniffer = self._sniffer
        sniffer.connected_at = now = self.mux.reactor.seconds()
        if sniffer.backend is not None:
            self.mux.stats.connected(sniffer.backend, now - sniffer.dialed_at)

    @property
    def sniffer(self) -> SniffingProtocol:
        """The protocol that classified this connection (for accounting and the access log)."""
        return self._sniffer

    def nest(self, inner: SniffingProtocol) -> None:
        """``inner`` sniffs what this connection carries (TLS termination): one log line, nested routes."""
        self._sniffer.inner = inner
        inner.enclosing = self._sniffer
        inner.listener = self._sniffer.listener


def _discard(data: bytes) -> None:
    """What a closed sniffer's reads call (none arrive after connectionLost)."""


@implementer(IProtocol)
class _Closed(Protocol):
    """Stands in when a target took the connection but returned no protocol."""


@implementer(IProtocol, IHalfCloseableProtocol, ILoggingContext)
class SniffingProtocol:
    """Buffers a connection's first bytes until a probe matches, then hands over.

    After attaching, the ``dataReceived`` slot holds the target protocol's own
    bound method so the data path adds no Python call per read. Every field is a
    slot (no instance dict: ~0.7 KB less per connection), so this is a plain
    class providing IProtocol rather than a ``Protocol`` subclass. A new
    per-connection field needs an entry in ``__slots__`` and a default in ``__init__``.
    """

    __slots__ = {  # noqa: RUF023  # grouped by meaning
        "dataReceived": "What a read calls: the sniffer's, then the target's bound method.",
        "transport": "The connection's transport (IProtocol).",
        "connected": "1 once makeConnection ran (IProtocol's convention).",
        "factory": "Unused; Protocol's attribute, kept for code that reads it.",
        "mux": "The Multiplexer that accepted this connection.",
        "peer": "The client's address (a trusted PROXY header's source once read).",
        "_buffer": "Bytes read while sniffing.",
        "_candidates": "Probes still undecided.",
        "_router": "The Router current when accepted.",
        "_ip": "The peer's IP text, for source matches.",
        "_deadline": "When sniffing times out (reactor seconds).",
        "_timer": "A late deadline's DelayedCall, if any.",
        "_queue": "The DeadlineQueue holding this connection while sniffing.",
        "_sniffing": "True while counted in stats.sniffing.",
        "_target": "The target protocol once attached (or _Closed).",
        "_half": "The target, when it takes half-closes (IHalfCloseableProtocol).",
        "_counters": "The route's counters once attached.",
        "_counted": "True while admission counts this connection.",
        "header_from": "Networks trusted to send a PROXY header.",
        "gate": "The listener's ListenerGate, if any.",
        "source": "The admission key of the peer.",
        "waiting": "The listener's sniffing connections this one is queued in (core/sniff_pressure.py).",
        "route": "The route chosen for this connection, once attached.",
        "preamble": "What classification found: set on attach and on refusal.",
        "outer": "Facts of an enclosing layer (TLS termination), merged by with_outer before routing.",
        "listener": "The name of the listener that accepted this connection.",
        "inner": "The sniffer of a nested stage (TLS termination), for the route path and the log.",
        "enclosing": "The sniffer this one is nested in (the TLS it was decrypted from), if any.",
        "why": "The refusal's reason name, once refused.",
        "end_reason": "Why portmux itself ended the connection (e.g. ``drain_timeout``), for the log.",
        "started": "When accepted (reactor seconds).",
        "sniff_seconds": "How long classification took.",
        "totals": "TCP_INFO byte counts at close (core/accounting.py).",
        "backend": "The backend dialled, for the log.",
        "dialed_at": "When the dial started.",
        "connected_at": "When the backend answered.",
    }

    def __init__(self, mux: Multiplexer, peer: IAddress) -> None:
        self.dataReceived: Callable[[bytes], None] = self._sniff
        self.transport: Any = None
        self.connected = 0
        self.factory: Any = None
        self.mux = mux
        self.peer = peer
        self._buffer = b""
        self._candidates: Sequence[IProbe] = mux.probes
        self._router = mux.router
        self._ip = peer_ip(peer)
        self._deadline = 0.0
        self._timer: Any = None
        self._queue: DeadlineQueue[SniffingProtocol] | None = None
        self._sniffing = False
        self._target: Any = None
        self._half: Any = None
        self._counters: RouteCounters | None = None
        self._counted = False
        self.header_from: tuple[Network, ...] = ()
        self.gate: ListenerGate | None = None
        self.source: Any = None
        self.waiting: dict[SniffingProtocol, float] | None = None
        self.route: Route | None = None
        self.preamble: Preamble | None = None
        self.outer: Preamble | None = None
        self.listener = "-"
        self.inner: SniffingProtocol | None = None
        self.enclosing: SniffingProtocol | None = None
        self.why: str | None = None
        self.end_reason: str | None = None
        self.started = 0.0
        self.sniff_seconds: float | None = None
        self.totals: accounting.TcpTotals | None = None
        self.backend: str | None = None
        self.dialed_at = 0.0
        self.connected_at = 0.0

    def makeConnection(self, transport: ITransport) -> None:
        """IProtocol: remember the transport, then connectionMade (as Protocol does)."""
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        """ILoggingContext: the class name, as Protocol's."""
        return self.__class__.__name__

    # -- connection events -------------------------------------------------

    def connectionMade(self) -> None:
        mux = self.mux
        stats = mux.stats
        stats.accepted += 1
        stats.sniffing += 1
        stats.for_listener(self.listener).accepted += 1
        self.started = mux.reactor.seconds()
        mux.connections.add(self)
        accounting.watch_close(self.transport, self)
        self._sniffing = True
        settings = mux.settings
        delay = settings.preamble_timeout
        self._deadline = self.started + delay
        if self._router.silent_route is not None:
            delay = min(delay, settings.silence_timeout)
        queue = self._queue = mux.deadline_queue(delay)
        queue.add(self)
        if self.header_from and _in_networks(self._ip, self.header_from):
            self.dataReceived = self._header_received

    def _header_received(self, data: bytes) -> None:
        """Read a PROXY v1/v2 header from a trusted load balancer, then sniff the rest."""
        self._buffer = self._buffer + data if self._buffer else data
        header = proxyheader.parse_header(self._buffer)
        if header is NEED_MORE:
            if len(self._buffer) >= self.mux.settings.preamble_max_bytes:
                self.refuse(UNKNOWN, refusal.BAD_REQUEST, "PROXY header too long",
                            why=refusal.PROXY_HEADER_TOO_LARGE)
            return
        if header is NO:
            self.refuse(UNKNOWN, refusal.BAD_REQUEST,
                        "trusted peer sent no valid PROXY header", why=refusal.PROXY_HEADER_MISSING)
            return
        self.dataReceived = self._sniff  # back to sniffing
        proxy = cast(proxyheader.ProxyHeader, header)
        if proxy.source is not None:
            self.peer = cast(IAddress, proxy.source)
            self._ip = peer_ip(self.peer)
        present_addresses(self.transport, cast(IAddress, proxy.source),
                          cast(IAddress, proxy.destination))
        rest = self._buffer[proxy.length:]
        self._buffer = b""
        if rest:
            self.dataReceived(rest)

    def _sniff(self, data: bytes) -> None:
        """Buffer a read and classify what has arrived so far."""
        self._buffer = self._buffer + data if self._buffer else data
        self._classify(final=False)

    def readConnectionLost(self) -> None:
        half = self._half
        if half is not None:  # attached to a half-closeable target: its EOF
            half.readConnectionLost()
            return
        target = self._target
        if target is None:
            if not self._buffer:
                self._stop_sniffing()
                self.transport.loseConnection()  # connected
                return
            self._classify(final=True)
            target = self._target
            if target is None:
                return
        half = IHalfCloseableProtocol(target, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = self._half
        if half is None:
            half = IHalfCloseableProtocol(self._target, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._counted:
            self._counted = False
            self.mux.admission.closed(self.gate, self.source)
        target = self._target
        if target is not None:
            if self._counters is not None:
                self._counters.active -= 1
            target.connectionLost(reason)
        else:
            self._stop_sniffing()
            self.mux.stats.for_listener(self.listener).closed_sniffing += 1
        self.dataReceived = _discard  # no bound method of ours left: no cycle to collect
        accounting.finish(self)
        inner = self.inner
        if inner is not None:  # the nested stage ended inside target.connectionLost above
            self.inner = inner.enclosing = None  # a cycle the collector would have to free

    # -- classification ----------------------------------------------------

    def _classify(self, final: bool, timed_out: bool = False) -> None:
        buffer = self._buffer
        if buffer[:1] in proxyheader.FIRST_BYTES and self._untrusted_header(final or timed_out):
            return
        cap = self.mux.settings.preamble_max_bytes
        full = len(buffer) >= cap
        if full and len(buffer) > cap:
            buffer = buffer[:cap]  # probes see the same bytes however the reads were split
        undecided = False
        first_match: Preamble | None = None
        keep: list[IProbe] = []
        for probe in self._candidates:
            verdict = probe.probe(buffer)
            if verdict is NO:
                continue
            if verdict is NEED_MORE:
                undecided = True
                keep.append(probe)
                continue
            if not undecided:
                self._route(verdict)  # type: ignore[arg-type]
                return
            keep.append(probe)
            if first_match is None:
                first_match = verdict  # type: ignore[assignment]
        self._candidates = keep
        if not keep:
            self._route(UNKNOWN)
        elif final or timed_out or full:
            if first_match is not None:
                self._route(first_match)
            elif timed_out:
                self.refuse(
                    self._guess(keep),
                    refusal.TIMEOUT,
                    f"preamble incomplete after {self.mux.settings.preamble_timeout:g} s",
                )
            elif final:
                self._route(UNKNOWN)
            else:
                self.refuse(
                    self._guess(keep),
                    refusal.TOO_LARGE,
                    f"preamble exceeds {cap} bytes",
                )

    def _untrusted_header(self, last_chance: bool) -> bool:
        """Refuse a PROXY header from a peer not trusted to send one (True: handled or waiting).

        Forwarding it would let any client claim any address to the backend.
        """
        verdict = proxyheader.signature(self._buffer)
        if verdict is NO or (verdict is NEED_MORE and last_chance):
            return False
        if verdict is True:
            self.refuse(UNKNOWN, refusal.BAD_REQUEST,
                        f"PROXY header from untrusted {peer_ip(self.peer) or _describe(self.peer)}",
                        why=refusal.PROXY_HEADER_UNTRUSTED)
        return True

    @staticmethod
    def _guess(candidates: Sequence[IProbe]) -> Preamble:
        """The protocol a refusal should speak when classification did not finish."""
        if len(candidates) == 1:
            return Preamble(protocol=candidates[0].name)
        return UNKNOWN

    def _timed_out(self) -> None:
        self._timer = None
        self._queue = None  # the queue already forgot us
        if self._target is not None:
            return
        now = self.mux.reactor.seconds()
        if not self._buffer and self._router.silent_route is not None:
            route = self._router.select_silent(self._ip)
            if route is not None:
                self._attach(route, SILENT if self.outer is None else with_outer(SILENT, self.outer))
                return
        if now < self._deadline:
            self._timer = self.mux.reactor.callLater(self._deadline - now, self._timed_out)
            return
        if self._buffer:
            self._classify(final=False, timed_out=True)
            return
        self.refuse(UNKNOWN, refusal.TIMEOUT, "no preamble before the deadline")

    def _stop_sniffing(self) -> None:
        """Leave the sniffing state once: cancel the deadline, update the gauge."""
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.discard(self)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._sniffing:
            self._sniffing = False
            self.mux.stats.sniffing -= 1
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.pop(self, None)

    def evict(self, reason: str) -> None:
        """Close this still-sniffing connection to make room for others; its place is free at once."""
        if self._counted:
            self._counted = False
            self.mux.admission.closed(self.gate, self.source)
        # A client that sent nothing gets a reset: no refusal to read, no FIN handshake.
        self.refuse(self._guess(self._candidates), refusal.TIMEOUT, reason, why=refusal.SNIFF_EVICTED,
                    abort=not self._buffer)

    # -- routing and attaching --------------------------------------------

    def _route(self, preamble: Preamble) -> None:
        if self.outer is not None:
            preamble = with_outer(preamble, self.outer)
        if preamble.protocol == "http" and preamble.via is None and preamble.path is not None:
            preamble = preamble.replace(via=request_via(preamble, local_port(self.transport)))
        route = self._router.select(preamble, self._ip)
        if self.mux.settings.trace and _in_networks(self._ip, self.mux.settings.trace):
            log_trace(self.mux.probes, self._router, self._buffer, self._ip, _describe(self.peer), preamble)
        if route is None:
            status = refusal.NOT_FOUND if preamble.error is None else refusal.BAD_REQUEST
            self.refuse(preamble, status, self._router.refusal_reason(preamble))
            return
        if preamble.protocol == "tcpmux" and not _serves_tcpmux(route):
            preamble = _not_tcpmux(preamble)
        self._attach(route, preamble)

    def _attach(self, route: Route, preamble: Preamble) -> None:
        self._stop_sniffing()
        self.route, self.preamble = route, preamble
        stats = self.mux.stats
        self.sniff_seconds = seconds = self.mux.reactor.seconds() - self.started
        stats.sniff_seconds.observe(seconds)
        stats.for_listener(self.listener).routed[route.name] += 1
        counters = stats.for_route(route.name)
        counters.connections += 1
        counters.active += 1
        self._counters = counters
        connection = Classified(
            self, cast(ITransport, self.transport), self._buffer, preamble, self.peer, route,
            self.mux,
        )
        self._buffer = b""
        self._target = _Closed()
        try:
            target = route.target.attach(connection)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001  # a failing target must not crash the listener
            log.failure("target of route {route} failed to attach", route=route.name)
            self.refuse(preamble, refusal.BAD_GATEWAY, "internal error", route=route.name,
                        why=refusal.INTERNAL_ERROR)
            return
        if target is None:
            target = _Closed()
        self._target = target
        self.dataReceived = target.dataReceived
        if IHalfCloseableProtocol.providedBy(target):  # EOFs go to the target too
            self._half = target

    def refuse(
        self, preamble: Preamble, status: int, reason: str, route: str | None = None,
        detail: str = "", why: str | None = None, abort: bool = False,
    ) -> None:
        """Answer ``preamble``'s protocol with a refusal, log one line, count it by reason, close.

        The client gets ``reason`` only; the log line adds ``detail``.  ``abort``: send
        no refusal, reset the connection (a silent client evicted under pressure).
        """
        self._stop_sniffing()
        self.why = why = why or refusal.reason_name(status, preamble)
        self.preamble = preamble
        if self._target is None:  # refused while sniffing: what else arrives is dropped
            self._target = _Closed()
            self._buffer = b""
            self.dataReceived = self._target.dataReceived
        self.mux.stats.refused(self.listener, why, route)
        log = self.mux.log
        if log.admit("refused"):  # a suppressed line builds nothing
            log.write(
                "refused {peer} protocol={protocol} route={route} {why} (status {status}): {reason}",
                peer=_describe(self.peer),
                protocol=preamble.protocol,
                route=route or "-",
                why=why,
                status=status,
                reason=f"{reason} ({detail})" if detail else reason,
            )
        transport = self.transport
        if transport is None:
            return
        if abort:
            abort_now(transport)
            return
        data = refusal_bytes(preamble, status, reason)
        if data:
            transport.write(data)
        transport.loseConnection()


def _serves_tcpmux(route: Route) -> bool:
    """True for a TCPMUX route: one naming a service, or ``protocol = "tcpmux"``."""
    match = route.match
    return match.service is not None or match.protocol == "tcpmux"


def _not_tcpmux(preamble: Preamble) -> Preamble:
    """A one-word line no TCPMUX route took (redis ``PING``, memcached ``stats``): raw bytes.

    The line stays in the payload and no ``+`` is sent, so a default route's backend
    sees exactly what the client wrote.
    """
    return preamble.replace(protocol=UNKNOWN.protocol, service=None, consumed=0)


def with_outer(preamble: Preamble, outer: Preamble) -> Preamble:
    """``preamble`` seen inside TLS: the outer sni/alpn/version facts replace the inner ones.

    HTTP/2 negotiated by ALPN (the h2c preface inside TLS) becomes protocol "http"
    with http_version "HTTP/2", and its host defaults to the SNI.
    """
    protocol, host = preamble.protocol, preamble.host
    if protocol == "h2c" and outer.alpn == ("h2",):
        protocol, host = "http", host or outer.sni
    return preamble.replace(
        protocol=protocol,
        host=host,
        sni=outer.sni,
        alpn=outer.alpn,
        tls_versions=outer.tls_versions,
        tls_version=outer.tls_version,
        tls_terminated=outer.tls_terminated,
    )


def _describe(address: object) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None:
        return f"{host}:{port}"
    return str(getattr(address, "name", address))


class _Listener(ServerFactory):
    """Listens for a Multiplexer on one port: its own connection gate, optional PROXY headers."""

    noisy = False

    def __init__(
        self, mux: Multiplexer, trusted: tuple[Network, ...], gate: ListenerGate | None,
        name: str = "-",
    ) -> None:
        self.mux = mux
        self.trusted = trusted
        self.gate = gate
        self.name = name

    def startFactory(self) -> None:
        self.mux.doStart()  # type: ignore[no-untyped-call]

    def stopFactory(self) -> None:
        self.mux.doStop()  # type: ignore[no-untyped-call]

    def listening(self, port: IListeningPort) -> None:
        """Record the port this factory listens on: paused and resumed by the gate."""
        if self.gate is not None:
            self.gate.ports.append(port)
        self.mux.admission.fit_batches()

    def buildProtocol(self, addr: IAddress) -> SniffingProtocol | None:  # type: ignore[override]
        protocol = self.mux.admit(addr, self.gate)
        if protocol is not None:
            protocol.header_from = self.trusted
            protocol.listener = self.name
        return protocol


class Multiplexer(ServerFactory):
    """Shares one listening port between many services by sniffing each connection.

    ``router`` can be replaced at any time; connections classify against the
    Router current when they were accepted.
    """

    protocol = SniffingProtocol
    noisy = False

    def __init__(
        self,
        reactor: Any,
        routes: Iterable[Route] = (),
        probes: Sequence[IProbe] | None = None,
        settings: SniffSettings = SniffSettings(),
        limits: Limits = Limits(),  # noqa: B008
        timeouts: Timeouts = Timeouts(),  # noqa: B008
    ) -> None:
        if probes is None:
            from portmux.protocols import all_probes

            probes = all_probes()
        self.reactor = reactor
        self.static_routes: tuple[Route, ...] = tuple(routes)
        self.router = Router(self.static_routes)
        self.listeners: list[str] = []
        self.ports: list[IListeningPort] = []
        """Ports opened by ``listen``, in order."""
        self.probes: tuple[IProbe, ...] = tuple(probes)
        self.settings = settings
        self.timeouts = timeouts
        """Timeouts after classification, read by targets (proxy, resource)."""
        self.admission = Admission(reactor, limits)
        self.pressure = SniffPressure(reactor, self.admission)
        """Keeps room for classifiable clients: evicts stale sniffers at the caps."""
        self.log = RateLimitedLog(reactor, log)
        """Refusals, limits and timeouts log through this: a flood becomes a summary."""
        self.stats = Stats()
        self.connections: set[SniffingProtocol] = set()
        """Every open connection (sniffing or attached), for draining on shutdown."""
        self._running = False
        self._started: dict[int, Any] = {}  # id(target) -> target, in start order
        self._shared: dict[str, Any] = {}
        self._deadlines: dict[float, DeadlineQueue[SniffingProtocol]] = {}
        self.registered_watchers: list[Callable[[str, Route | None], None]] = []
        """Told of each change to the registered layer: ("add", route), ("remove", route),
        ("reset", None) (a process group's parent passes them to its children)."""

    def deadline_queue(self, delay: float) -> DeadlineQueue[SniffingProtocol]:
        """The shared timer queue for sniffing connections that time out after ``delay``.

        One per distinct delay (settings can change on reload); empty ones are
        dropped when a new delay appears.
        """
        queue = self._deadlines.get(delay)
        if queue is None:
            self._deadlines = {d: q for d, q in self._deadlines.items() if len(q)}
            queue = self._deadlines[delay] = DeadlineQueue(
                self.reactor, delay, SniffingProtocol._timed_out
            )
        return queue

    def buildProtocol(self, addr: IAddress) -> SniffingProtocol | None:  # type: ignore[override]
        return self.admit(addr, None)

    def admit(self, addr: IAddress, gate: ListenerGate | None) -> SniffingProtocol | None:
        """A sniffer for a just-accepted connection, or None (Twisted closes it) over a limit."""
        admission = self.admission
        if admission.over_cap(gate):
            self.stats.not_accepted["max_connections"] += 1
            self.log.emit("limit", "closed {peer}: max_connections reached", peer=_describe(addr))
            return None
        source = admission.source_key(peer_ip(addr))
        why = admission.refusal(source)
        if why is not None:
            admission.refused_sources += 1
            self.stats.not_accepted["per_source_limit"] += 1
            self.log.emit("source-limit", "closed {peer}: {why}", peer=_describe(addr), why=why)
            return None
        self.pressure.make_room(gate)
        protocol = SniffingProtocol(self, addr)
        protocol.gate, protocol.source, protocol._counted = gate, source, True
        self.pressure.track(protocol, gate)
        admission.opened(gate, source)
        return protocol

    def listener_factory(
        self, proxy_header_from: tuple[Network, ...] = (), name: str | None = None,
        max_connections: int = 0,
    ) -> ServerFactory:
        """The factory to listen with on one port.

        Peers in ``proxy_header_from`` must send a PROXY header; ``name`` labels the
        listener's connections in counters and the access log; ``max_connections``
        (0: none) is this listener's own cap, on top of the global one.
        """
        return _Listener(self, proxy_header_from, self.admission.gate(max_connections),
                         name or "-")

    def set_limits(self, limits: Limits) -> None:
        """Replace the admission limits (reload)."""
        self.admission.set_limits(limits)

    # -- routes ------------------------------------------------------------

    def add_route(
        self, target: Any, *legacy: Any, name: str | None = None, **match: Any
    ) -> Route:
        """Append a static route sending connections matching ``match`` to ``target``.

        ``target`` is an ITarget, or an IResource / IProtocolFactory (adapted); the
        name defaults to one made from the match. The old ``add_route(name, target,
        **match)`` form still works, with a DeprecationWarning.
        """
        if isinstance(target, str) and len(legacy) == 1 and name is None:
            warnings.warn(
                "add_route(name, target, **match) is deprecated; "
                "use add_route(target, name=name, **match)",
                DeprecationWarning,
                stacklevel=2,
            )
            name, target = target, legacy[0]
        elif legacy:
            raise TypeError("add_route takes one target; the match is given by keywords")
        route = Route(name or self._fresh_name(match), Match(**match), as_target(target))
        self.set_static_routes(self.static_routes + (route,))
        return route

    def remove_route(self, route: Route) -> None:
        """Remove a static route added earlier (its target is stopped if now unused)."""
        self.set_static_routes(r for r in self.static_routes if r is not route)

    def endpoint(self, name: str | None = None, **match: Any) -> IStreamServerEndpoint:
        """An IStreamServerEndpoint for "the ``match`` part" of this multiplexer's ports.

        ``listen(factory)`` adds a route serving matching connections with
        ``factory``; the returned port's ``stopListening`` removes it.
        """
        from portmux.core.endpoint import RouteEndpoint

        return RouteEndpoint(self, name, match)

    def _fresh_name(self, match: dict[str, Any]) -> str:
        """A route name from the match (``http``, ``ssh-2``...), unique in this multiplexer."""
        base = next(
            (str(match[key]) for key in ("service", "protocol", "via", "sni", "host")
             if match.get(key)),
            "default" if match.get("default") else "silent" if match.get("silent") else "route",
        )
        taken = {route.name for route in self.static_routes}
        name, n = base, 1
        while name in taken or name in self.router.registered:
            n += 1
            name = f"{base}-{n}"
        return name

    @property
    def registered_routes(self) -> tuple[Route, ...]:
        """The routes registered at run time by workers, most specific first."""
        return self.router.registered.routes()

    def set_static_routes(self, routes: Iterable[Route]) -> None:
        """Replace the configured routes (e.g. on reload), keeping registered ones."""
        self.static_routes = tuple(routes)
        self.set_router(Router(self.static_routes, self.router.registered))

    def set_registered_routes(self, routes: Iterable[Route]) -> None:
        """Replace every route registered at run time by workers; they come first."""
        self.set_router(Router(self.static_routes, RegisteredLayer.of(routes)))
        for watcher in self.registered_watchers:
            watcher("reset", None)

    def add_registered_route(self, route: Route) -> None:
        """Add one worker route in O(log n): no other route is re-indexed."""
        self.router = self.router.with_registered(self.router.registered.with_route(route))
        if self._running:
            self._start_target(route.target)
        for watcher in self.registered_watchers:
            watcher("add", route)

    def remove_registered_route(self, route: Route) -> None:
        """Remove one worker route in O(log n); its target stops if no route uses it."""
        router = self.router
        self.router = router.with_registered(router.registered.without(route.name))
        target = route.target
        if (self._running and not self.router.registered.uses_target(target)
                and all(r.target is not target for r in self.static_routes)):
            started = self._started.pop(id(target), None)
            if started is not None:
                self._stop_target(started)
        for watcher in self.registered_watchers:
            watcher("remove", route)

    def set_router(self, router: Router) -> None:
        """Swap in a new Router, starting new targets and stopping ones no route uses."""
        self.router = router
        if self._running:
            targets = router.targets()
            for target in targets:
                self._start_target(target)
            in_use = {id(target) for target in targets}
            for key in [key for key in self._started if key not in in_use]:
                self._stop_target(self._started.pop(key))

    # -- lifecycle ---------------------------------------------------------

    def listen(self, endpoint: str | IStreamServerEndpoint) -> Deferred[IListeningPort]:
        """Listen on an endpoint object or a Twisted server endpoint string."""
        if isinstance(endpoint, str):
            from twisted.internet.endpoints import serverFromString

            endpoint = cast(IStreamServerEndpoint, serverFromString(self.reactor, endpoint))
        listening: Deferred[IListeningPort] = endpoint.listen(self)
        return listening.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.ports.append(port)
        self.admission.extra_ports.append(port)
        return port

    def startFactory(self) -> None:
        self._running = True
        for target in self.router.targets():
            self._start_target(target)

    def stopFactory(self) -> None:
        self._running = False
        self.log.flush()
        self.admission.stop()
        self.pressure.stop()
        started, self._started = self._started, {}
        for target in reversed(list(started.values())):
            self._stop_target(target)

    @staticmethod
    def _stop_target(target: Any) -> None:
        stop = getattr(target, "stop", None)
        if stop is not None:
            try:
                stop()
            except Exception:  # noqa: BLE001
                log.failure("stopping target {target} failed", target=target)

    def _start_target(self, target: Any) -> None:
        if id(target) in self._started:
            return
        self._started[id(target)] = target
        start = getattr(target, "start", None)
        if start is not None:
            start()

    def shared(self, key: str, build: Callable[[Multiplexer], T]) -> T:
        """The object ``build(self)`` made on first use of ``key``, shared by this multiplexer.

        Targets keep per-multiplexer state here (the resource routes' one Site) without
        the core knowing what it is.
        """
        try:
            return cast(T, self._shared[key])
        except KeyError:
            value = self._shared[key] = build(self)
            return value
