# -*- test-case-name: tests.core.test_accounting,tests.daemon.test_accesslog -*-
"""What one connection did, read when it ends: bytes each way, who closed first, timings.

Bytes are not counted per read (the data path stays untouched): just before the
socket is closed, one ``getsockopt(TCP_INFO)`` gives the kernel's own totals
(bytes received, bytes sent minus retransmitted plus still queued) and the TCP
state, which tells whether the client's FIN came before ours.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from portmux._twisted import SocketWatch, watch_socket_close

_TCP_INFO: int = getattr(socket, "TCP_INFO", -1)
_INFO_SIZE = 216  # up to tcpi_bytes_retrans (Linux >= 4.19)
_SENT = struct.Struct("=QQ")  # bytes_sent @200, bytes_retrans @208
_RECEIVED = struct.Struct("=Q")  # tcpi_bytes_received @128
_NOTSENT = struct.Struct("=I")  # tcpi_notsent_bytes @144
_HAS_INFO = _TCP_INFO != -1 and sys.platform.startswith("linux")

# Linux TCP states (include/net/tcp_states.h).
_CLIENT_FIRST = {8, 9}  # CLOSE_WAIT, LAST_ACK: the peer's FIN arrived before ours
_US_FIRST = {4, 5, 6, 11}  # FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING: ours went first
_CLOSED = 7


@dataclass(slots=True)
class TcpTotals:
    """The kernel's view of a TCP socket just before close, and whose FIN came first."""

    bytes_in: int
    bytes_out: int
    state: int
    client_fin_first: bool | None = None
    """True/False once the client's FIN was read (was our write side still open?); else None."""

    def ended_by(self) -> str:
        """``client``, ``server`` (portmux or its backend closed first), ``reset`` or ``open``."""
        if self.client_fin_first is not None:
            return "client" if self.client_fin_first else "server"
        if self.state in _CLIENT_FIRST:
            return "client"
        if self.state in _US_FIRST:
            return "server"
        if self.state == _CLOSED:
            return "reset"  # closed with no FIN read from the client
        return "open"


def _info(skt: Any) -> bytes | None:
    if not _HAS_INFO:
        return None
    try:
        info: bytes = skt.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except (OSError, AttributeError):
        return None
    return info if len(info) >= _INFO_SIZE else None


def tcp_totals(skt: Any, client_fin_first: bool | None = None) -> TcpTotals | None:
    """``skt``'s byte totals and state from TCP_INFO, or None (not TCP, or not Linux)."""
    info = _info(skt)
    if info is None:
        return None
    (received,) = _RECEIVED.unpack_from(info, 128)
    (notsent,) = _NOTSENT.unpack_from(info, 144)
    sent, retrans = _SENT.unpack_from(info, 200)
    state = info[0]
    if received and (client_fin_first is not None or state in _FIN_IN):
        received -= 1  # the client's FIN takes one sequence number
    return TcpTotals(received, sent - retrans + notsent, state, client_fin_first)


_FIN_IN = {8, 9, 11}  # CLOSE_WAIT, LAST_ACK, CLOSING


class _Watcher(SocketWatch):
    """Reads a connection's TCP_INFO at close, for its sniffer, noting who sent FIN first."""

    __slots__ = ("fin_first", "sniffer")

    def __init__(self, sniffer: Any) -> None:
        SocketWatch.__init__(self)
        self.sniffer = sniffer
        self.fin_first: bool | None = None

    def socket_eof(self, write_open: bool) -> None:
        if self.fin_first is None:
            self.fin_first = write_open  # the client's FIN came while our side was still open

    def socket_closing(self, skt: Any) -> None:
        sniffer = self.sniffer
        if sniffer.totals is None:
            sniffer.totals = tcp_totals(skt, self.fin_first)
        self.sniffer = None


def watch_close(transport: Any, sniffer: Any) -> None:
    """Have ``transport`` leave its TCP totals on ``sniffer.totals`` just before it closes.

    The hooks are portmux._twisted.watch_socket_close's (nothing runs per read);
    transports without a TCP socket (TLS, UNIX, in-memory) report no byte counts.
    """
    watch_socket_close(transport, _Watcher(sniffer))


@dataclass(slots=True)
class ConnectionRecord:
    """One finished connection, as the access log and the counters see it."""

    start: float
    client: str
    listener: str
    protocol: str
    sni: str | None
    alpn: str | None
    host: str | None
    path: str | None
    service: str | None
    via: str | None
    route: str | None
    target: str | None
    backend: str | None
    bytes_in: int | None
    bytes_out: int | None
    sniff_seconds: float | None
    connect_seconds: float | None
    duration: float
    end: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, in a stable order."""
        return {name: getattr(self, name) for name in self.__slots__}


def describe_address(address: object) -> str:
    """``host:port`` for IP addresses, the path (or repr) otherwise."""
    host = getattr(address, "host", None)
    if host is not None:
        port = getattr(address, "port", None)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name) if name else "-"


def route_path(sniffer: Any) -> tuple[str | None, Any]:
    """The full nested route name (``https/site``) and the innermost sniffer that routed."""
    route = sniffer.route
    if route is None:
        return None, sniffer
    names = [route.name]
    inner = sniffer
    while inner.inner is not None and inner.inner.route is not None:
        inner = inner.inner
        names.append(inner.route.name)
    return "/".join(names), inner


def record_of(sniffer: Any, now: float) -> ConnectionRecord:
    """The record of ``sniffer``'s connection, which has just ended."""
    route, inner = route_path(sniffer)
    preamble = inner.preamble or sniffer.preamble
    totals: TcpTotals | None = sniffer.totals
    target = inner.route.kind if inner.route is not None else None
    if sniffer.why is not None or inner.why is not None:
        end = sniffer.why or inner.why
    elif sniffer.end_reason is not None:
        end = sniffer.end_reason
    elif sniffer.route is None:
        end = "closed_while_sniffing"
    elif totals is None:
        end = "closed"
    else:
        by = totals.ended_by()
        if by == "server":
            end = "backend_close" if target == "proxy" else "server_close"
        else:
            end = {"client": "client_close", "reset": "reset", "open": "local_close"}[by]
    alpn = None
    if preamble is not None and preamble.alpn:
        alpn = ",".join(preamble.alpn)
    dialed = inner.dialed_at or sniffer.dialed_at
    connected = inner.connected_at or sniffer.connected_at
    return ConnectionRecord(
        start=sniffer.started,
        client=describe_address(sniffer.peer),
        listener=sniffer.listener,
        protocol=preamble.protocol if preamble is not None else "-",
        sni=preamble.sni if preamble is not None else None,
        alpn=alpn,
        host=preamble.host if preamble is not None else None,
        path=preamble.path if preamble is not None else None,
        service=preamble.service if preamble is not None else None,
        via=preamble.via if preamble is not None else None,
        route=route,
        target=target,
        backend=inner.backend or sniffer.backend,
        bytes_in=totals.bytes_in if totals is not None else None,
        bytes_out=totals.bytes_out if totals is not None else None,
        sniff_seconds=sniffer.sniff_seconds,
        connect_seconds=(connected - dialed) if dialed and connected else None,
        duration=max(0.0, now - sniffer.started),
        end=end,
    )


def finish(sniffer: Any) -> None:
    """``sniffer``'s connection ended: add its bytes to its routes, tell the observers."""
    mux = sniffer.mux
    mux.connections.discard(sniffer)
    totals = sniffer.totals
    if totals is not None:
        level = sniffer
        while level is not None and level.route is not None:  # the route and its nested ones
            counters = level.mux.stats.for_route(level.route.name)
            counters.bytes_in += totals.bytes_in
            counters.bytes_out += totals.bytes_out
            level = level.inner
    observers = mux.stats.observers
    if observers:
        record = record_of(sniffer, mux.reactor.seconds())
        for observer in observers:
            try:
                observer(record)
            except Exception:  # noqa: BLE001  # a broken log must not break connections
                from twisted.logger import Logger

                Logger(namespace="portmux").failure("connection observer {observer} failed",
                                                    observer=observer)


def request_record(
    sniffer: Any, route: Any, preamble: Any, client: object, start: float, now: float,
    request: Any,
) -> ConnectionRecord:
    """The record of one HTTP request routed on its own (per-request routing).

    ``sniffer`` is the connection's innermost sniffer; the route path names the
    enclosing routes too (``https/site``).
    """
    names = [route.name] if route is not None else []
    top = sniffer
    while top is not None and top.enclosing is not None:
        top = top.enclosing
        if top.route is not None:
            names.insert(0, top.route.name)
    backend = getattr(sniffer, "backend", None) if sniffer is not None else None
    length = request.getHeader(b"content-length")
    return ConnectionRecord(
        start=start,
        client=describe_address(client),
        listener=getattr(top, "listener", "-"),
        protocol="http",
        sni=preamble.sni,
        alpn=preamble.alpn[0] if preamble.alpn else None,
        host=preamble.host,
        path=preamble.path,
        service=None,
        via=None,
        route="/".join(names) or None,
        target=route.kind if route is not None else None,
        backend=backend,
        bytes_in=int(length) if length and length.isdigit() else None,
        bytes_out=getattr(request, "sentLength", None),
        sniff_seconds=None,
        connect_seconds=None,
        duration=now - start,
        end=f"request_{request.code}",
    )
