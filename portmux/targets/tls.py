# -*- test-case-name: tests.targets.test_tls,tests.tls.test_certificates -*-
"""TLS termination: decrypt with an SNI-chosen certificate, then sniff the plaintext again.

The inner stage is an ordinary Multiplexer (not listening) whose preambles carry
the outer facts: sni, the negotiated ALPN protocol, the TLS version and
``tls_terminated=True`` (see portmux.core.mux.with_outer).  Without a configured
``alpn`` list, the inner stage offers what its routes serve (``http_alpn_offer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, cast

from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.http import H2_ENABLED
from zope.interface import implementer

from portmux._twisted import TerminatingTLS
from portmux.core import refusal
from portmux.core.interfaces import IProbe, ITarget
from portmux.core.mux import (
    UNKNOWN,
    Multiplexer,
    SniffingProtocol,
    SniffSettings,
    with_outer,
)
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route, Router
from portmux.targets.resource import ResourceTarget
from portmux.tls import CertificateStore, IALPNOffer

log = Logger(namespace="portmux")

__all__ = ["TLSTarget"]


@implementer(IHandshakeListener)
class _InnerSniffer(SniffingProtocol):
    """Sniffs decrypted bytes; learns the outer facts when the handshake completes."""

    client_hello: Preamble | None = None

    def handshakeCompleted(self) -> None:
        tls = self.transport
        handle = tls.getHandle()
        negotiated = tls.negotiatedProtocol
        hello = self.client_hello or Preamble(protocol="tls")
        raw_name = handle.get_servername()
        sni = raw_name.decode("ascii", "replace").lower() if raw_name else hello.sni
        self.outer = Preamble(
            protocol="tls",
            sni=sni,
            alpn=(negotiated.decode("ascii", "replace"),) if negotiated else (),
            tls_versions=hello.tls_versions,
            tls_version=handle.get_protocol_version_name(),
            tls_terminated=True,
        )
        mux = cast(_InnerMultiplexer, self.mux)
        route = mux.tls_facts_routes().route_without_content(self.outer, self._ip)
        if route is not None:
            self._attach(route, with_outer(UNKNOWN, self.outer))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.outer is None and self._target is None:
            self.mux.stats.refusals[refusal.TLS_HANDSHAKE_FAILED] += 1
            self.mux.stats.tls_handshake_failures[_reason_name(reason)] += 1
            log.info(
                "TLS handshake with {peer} failed: {reason}",
                peer=_describe(self.peer),
                reason=_reason_text(reason),
            )
        super().connectionLost(reason)


@implementer(IALPNOffer)
class _InnerMultiplexer(Multiplexer):
    """The plaintext stage behind TLS termination; never listens itself."""

    h2_enabled = H2_ENABLED
    _facts_routes: _TLSFactsRoutes | None = None

    def tls_facts_routes(self) -> _TLSFactsRoutes:
        """The current routes as decided by TLS facts alone (see ``_TLSFactsRoutes``)."""
        cached = self._facts_routes
        if cached is None or cached.router is not self.router:
            cached = self._facts_routes = _TLSFactsRoutes(self.router)
        return cached

    def buildProtocol(self, addr: Any) -> _InnerSniffer:
        return _InnerSniffer(self, addr)

    def alpn_offer(self, server_name: str | None) -> tuple[bytes, ...]:
        """The ALPN ids for a hello naming ``server_name`` when none are configured."""
        return http_alpn_offer(self.router.routes, server_name, self.h2_enabled)


HTTP_PROTOCOLS = (None, "http", "h2c")
"""Route protocols that can take an HTTP connection."""


def http_alpn_offer(
    routes: Iterable[Route], server_name: str | None, h2_enabled: bool = H2_ENABLED
) -> tuple[bytes, ...]:
    """ALPN ids for in-process HTTP: ``h2``+``http/1.1``, ``http/1.1`` alone, or none.

    Only routes that can take a hello naming ``server_name`` count. ``http/1.1`` is
    offered when one of them serves in-process resources; ``h2`` too when the h2 extra
    is installed and no other target could be handed an HTTP connection (a proxied
    backend may not speak HTTP/2). A route that decides on TLS facts alone ends the
    search: it takes the connection whatever the plaintext is.
    """
    outer = Preamble(protocol="tls", sni=server_name, tls_terminated=True)
    resources = others = False
    for route in routes:
        match = route.match
        if match.silent or match.alpn is not None:
            continue
        if match.sni is not None and not Match(sni=match.sni).accepts(outer, ""):
            continue
        if isinstance(route.target, ResourceTarget):
            resources = True
        elif match.protocol in HTTP_PROTOCOLS:
            others = True
        if not match.default and _tls_facts_only(match):
            break
    if not resources:
        return ()
    if h2_enabled and not others:
        return (b"h2", b"http/1.1")
    return (b"http/1.1",)


def _tls_facts_only(match: Match) -> bool:
    """True for a match on sni/alpn/network alone (it never looks at the plaintext)."""
    return dataclasses.replace(match, sni=None, alpn=None, network=()) == Match()


@implementer(ITarget)
class TLSTarget:
    """Terminates TLS with ``store``'s certificates and routes the plaintext by ``inner_routes``."""

    kind = "tls"

    def __init__(
        self,
        reactor: Any,
        store: CertificateStore,
        inner_routes: Iterable[Route] = (),
        probes: Sequence[IProbe] | None = None,
        settings: SniffSettings = SniffSettings(),  # noqa: B008  # frozen dataclass
    ) -> None:
        self.reactor = reactor
        self.store = store
        self._rotation: Any = None
        self.inner = _InnerMultiplexer(reactor, inner_routes, probes=probes, settings=settings)
        self._tls_factory = TLSMemoryBIOFactory(
            cast(IOpenSSLServerConnectionCreator, store),
            False,
            cast(IProtocolFactory, self.inner),
            clock=reactor,
        )
        self._tls_factory.protocol = TerminatingTLS
        names = ", ".join(store.names()) or "-"
        self.description = f"tls termination for {names} → {len(self.inner.router.routes)} route(s)"

    def start(self) -> None:
        self.inner.startFactory()
        self._schedule_rotation()

    def stop(self) -> None:
        rotation, self._rotation = self._rotation, None
        if rotation is not None and rotation.active():
            rotation.cancel()
        self.inner.stopFactory()

    def _schedule_rotation(self) -> None:
        """Renew the session-ticket keys every ``session_lifetime`` seconds."""
        lifetime = self.store.settings.session_lifetime
        if lifetime > 0:
            self._rotation = self.reactor.callLater(lifetime, self._rotate)

    def _rotate(self) -> None:
        self._rotation = None
        self.store.rotate_session_keys()
        log.info("TLS session ticket keys rotated for {names}", names=", ".join(self.store.names()))
        self._schedule_rotation()

    def reload(self) -> bool:
        """Reload certificates (SIGHUP); open connections keep their context."""
        return self.store.reload()

    def attach(self, connection: Any) -> IProtocol | None:
        hello: Preamble = connection.preamble
        if self.store.refuses(hello.sni):
            connection.refuse(refusal.NOT_FOUND, f"no certificate for server name {hello.sni}",
                              why=refusal.UNKNOWN_SNI)
            return None
        protocol = self._tls_factory.buildProtocol(connection.peer)
        sniffer = protocol.wrappedProtocol
        sniffer.client_hello = hello  # type: ignore[attr-defined]  # our inner sniffer
        connection.nest(sniffer)
        protocol.makeConnection(connection.transport)
        payload = connection.payload
        if payload:
            protocol.dataReceived(payload)
        return cast(IProtocol, protocol)


CONTENT_FIELDS: dict[str, Any] = {
    "protocol": None, "host": None, "path": None, "service": None, "via": None
}


class _TLSFactsRoutes:
    """``route_without_content`` over one Router, with its TLS-facts-only matches made once.

    Rebuilt when the multiplexer's (immutable) Router is replaced: a route change
    never sees a stale list, and no connection pays a ``dataclasses.replace``.
    """

    __slots__ = ("entries", "router")

    def __init__(self, router: Router) -> None:
        self.router = router
        self.entries = tuple(
            (
                route,
                dataclasses.replace(route.match, **CONTENT_FIELDS),
                any(getattr(route.match, name) is not None for name in CONTENT_FIELDS),
            )
            for route in router.routes
            if not (route.match.silent or route.match.default)
        )

    def route_without_content(self, outer: Preamble, ip: str) -> Route | None:
        """The route decided by the TLS facts alone, before any plaintext arrives.

        A route like ``{ sni = "b.example.com" }`` takes the connection at once, so
        server-speaks-first and short-message protocols need not wait for sniffing;
        a route that looks at the plaintext and could still match comes first.
        """
        for route, facts_only, looks_at_content in self.entries:
            if not facts_only.accepts(outer, ip):
                continue
            return None if looks_at_content else route
        return None


def _describe(address: object) -> str:
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', None)}" if host is not None else str(address)


def _reason_name(reason: Failure) -> str:
    """A short metric label for a failed handshake: OpenSSL's reason words, or how it ended."""
    args: tuple[Any, ...] = tuple(getattr(reason.value, "args", ()))
    text = _reason_text(reason) if args else ""
    words = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    if not words or not isinstance(args[0], list):
        return "connection_closed"
    return "_".join(filter(None, words.split("_")))[:60]


def _reason_text(reason: Failure) -> str:
    value = reason.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        entry = args[0][0]
        if isinstance(entry, tuple) and entry:
            return str(entry[-1])
    return str(value) or type(value).__name__
