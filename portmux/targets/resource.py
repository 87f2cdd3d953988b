# -*- test-case-name: tests.daemon.test_config,tests.targets.test_resource,tests.targets.test_tls -*-
"""In-process twisted.web resources, all served by one Site per multiplexer.

Every resource route of a multiplexer shares one Site whose root re-matches each
request's Host and path, so keep-alive requests for different paths reach
different resources.  An h2c (HTTP/2 prior knowledge) connection is served by the
same Site over Twisted's HTTP/2 support, as an ALPN-h2 connection after TLS is.
"""

from __future__ import annotations

import weakref
from typing import Any, cast

from twisted.internet.interfaces import INegotiated, IProtocol
from twisted.logger import Logger
from twisted.web.http import H2_ENABLED
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Site
from zope.interface import directlyProvides, implementer, providedBy

from portmux import _twisted
from portmux.core import refusal
from portmux.core.accounting import request_record
from portmux.core.interfaces import ITarget
from portmux.core.routing import normalize_name, peer_ip
from portmux.protocols.http import request_via
from portmux.targets._http_front import GuardedChannel, RoutedRequest

log = Logger(namespace="portmux")


@implementer(ITarget)
class ResourceTarget:
    """Mounts ``resource`` at its route's host and path prefix."""

    kind = "resource"
    per_request = True

    def __init__(self, resource: IResource) -> None:
        self.resource = resource
        self.description = f"resource {type(resource).__module__}.{type(resource).__qualname__}"

    def start(self) -> None:
        """Nothing to start: the Site belongs to the multiplexer."""

    def stop(self) -> None:
        """Nothing to stop."""

    h2_enabled = H2_ENABLED

    def cannot_serve(self, match: Any) -> str | None:
        """Why a route with ``match`` could not be served (``portmux check`` reports it)."""
        if match.protocol == "h2c" and not self.h2_enabled:
            return (
                "h2c to an in-process resource needs Twisted's HTTP/2 support: "
                "install the h2 extra (pip install 'portmux[h2]')"
            )
        return None

    def attach(self, connection: Any) -> IProtocol | None:
        return serve_http(connection, self.h2_enabled)


def serve_http(connection: Any, h2_enabled: bool = H2_ENABLED) -> IProtocol | None:
    """Serve a classified HTTP connection with the multiplexer's one Site, routing per request.

    HTTP/1.x gets the hardened, bounded channel (portmux.targets._http_front); HTTP/2
    (ALPN after TLS termination, or h2c prior knowledge) twisted.web's own, whose
    streams are routed the same way.
    """
    transport = connection.transport
    h2 = connection.preamble.http_version == "HTTP/2"  # switched to by ALPN
    if _prior_knowledge_h2(connection.preamble, transport):
        if not h2_enabled:
            connection.refuse(
                refusal.UNAVAILABLE, "HTTP/2 needs the h2 extra (pip install portmux[h2])"
            )
            return None
        transport = PriorKnowledgeH2(transport)
        h2 = True
    mux = connection.mux
    site = mux.shared("portmux.targets.resource.site", dispatching_site)
    site.resource.remember(transport, connection.preamble, connection.peer)
    try:  # the access log and metrics name the backends its requests go to
        transport.portmux_connection = connection
    except AttributeError:
        pass
    timeouts = getattr(mux, "timeouts", None)
    if timeouts is not None:
        site.timeOut = timeouts.client_idle or None  # keep-alive idle limit
    if h2:
        channel = site.buildProtocol(connection.peer)
    else:
        settings = mux.settings
        channel = site.http1_channel(connection.peer)
        channel.configure(settings.preamble_max_bytes, settings.preamble_timeout, connection.preamble)
    channel.makeConnection(transport)
    payload = connection.payload
    if payload:
        channel.dataReceived(payload)
    return channel  # type: ignore[no-any-return]


def _prior_knowledge_h2(preamble: Any, transport: Any) -> bool:
    """An HTTP/2 preface on a connection that did not negotiate h2 by ALPN."""
    return bool(
        preamble.protocol == "h2c" and getattr(transport, "negotiatedProtocol", None) != b"h2"
    )


@implementer(INegotiated)
class PriorKnowledgeH2:
    """A connection's transport as its HTTP channel sees it: HTTP/2 by prior knowledge.

    twisted.web's channel switches to HTTP/2 when its transport's public
    ``INegotiated.negotiatedProtocol`` says ``h2``; everything else is the transport's.
    """

    negotiatedProtocol = b"h2"

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        directlyProvides(self, providedBy(transport), INegotiated)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _address_key(host: Any, peer: Any) -> tuple[str, str]:
    """A live connection's (local, peer) addresses: one TCP connection per key."""
    return repr(host), repr(peer)


def _request_transport(request: Any, by_address: Any) -> Any:
    """The connection transport a request (HTTP/1 or an HTTP/2 stream) arrived on."""
    channel = _twisted.stream_connection(request.channel)  # HTTP/2 streams: their connection
    transport = getattr(channel, "transport", None)
    if transport is None:  # an HTTP/2 stream without the fast path: find it by addresses
        transport = by_address.get(_address_key(request.getHost(), request.getClientAddress()))
    return transport


def _request_preamble(request: Any, preambles: Any, transport: Any, target: bytes | None = None) -> Any:
    """The connection's preamble, with this request's host and path."""
    base = preambles.get(transport)
    host = request.getHeader(b"host")
    if host is not None:
        host = normalize_name(host.decode("latin-1").rsplit(":", 1)[0].strip("[]"))
    if target is None:
        path = request.path.decode("latin-1")
    else:
        path = target.split(b"?", 1)[0].decode("latin-1")
        if not path.startswith("/"):  # absolute-form: http://host/path
            after = path.split("://", 1)[-1]
            path = "/" + after.split("/", 1)[1] if "/" in after else "/"
    if base is None:
        from portmux.core.preamble import Preamble

        base = Preamble(protocol="http")
    preamble = base.replace(host=host or base.host, path=path)
    return preamble.replace(via=request_via(preamble, getattr(request.getHost(), "port", None)))


class _Dispatcher(Resource):
    """Root resource that picks the first resource route matching each request."""

    def __init__(self, mux: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._mux = mux
        self._preambles: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._peers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        # Without _twisted.FAST_PATHS an HTTP/2 stream does not lead to its transport.
        self._by_address: weakref.WeakValueDictionary[Any, Any] = weakref.WeakValueDictionary()

    def remember(self, transport: Any, preamble: Any, peer: Any = None) -> None:
        """Record the preamble (and PROXY-header-aware peer) of a connection served by this Site."""
        try:
            self._preambles[transport] = preamble
            if peer is not None:
                self._peers[transport] = peer
        except TypeError:  # a transport that cannot be weakly referenced
            return
        if not _twisted.FAST_PATHS:
            key = _address_key(transport.getHost(), transport.getPeer())
            self._by_address[key] = transport

    @property
    def reactor(self) -> Any:
        return self._mux.reactor

    def facts(self, request: Any, target: bytes | None = None) -> tuple[Any, Any]:
        """(preamble with this request's host and path, the client's address) for ``request``.

        The address is the connection's peer as routing saw it (a PROXY header's
        source when one was read), not only the socket's.
        """
        known = getattr(request, "portmux_facts", None)
        if known is not None:
            return known  # type: ignore[no-any-return]
        transport = _request_transport(request, self._by_address)
        preamble = _request_preamble(request, self._preambles, transport, target)
        peer = self._peers.get(transport)
        facts = preamble, peer if peer is not None else request.getClientAddress()
        request.portmux_facts = facts
        return facts

    def connection_of(self, request: Any) -> Any:
        """The Classified connection ``request`` arrived on, if known (for accounting)."""
        return getattr(_request_transport(request, self._by_address), "portmux_connection", None)

    def route_for(self, request: Any, target: bytes | None = None) -> Any:
        """The route the multiplexer's Router chooses for this request's host and path."""
        preamble, peer = self.facts(request, target)
        request.portmux_preamble = preamble
        route = self._mux.router.select(preamble, peer_ip(peer))
        self._log_when_finished(request, route, preamble, peer)
        return route

    def _log_when_finished(self, request: Any, route: Any, preamble: Any, peer: Any) -> None:
        """One access-log record per request, when it finishes (only if someone observes)."""
        if getattr(request, "portmux_logged", False):
            return
        request.portmux_logged = True
        connection = self.connection_of(request)
        sniffer = getattr(connection, "sniffer", None)
        top = sniffer
        while top is not None and top.enclosing is not None:
            top = top.enclosing
        observers = (top.mux if top is not None else self._mux).stats.observers
        if not observers:
            return
        reactor = self._mux.reactor
        start = reactor.seconds()

        def finished(_: object) -> None:
            if getattr(request, "portmux_passed_on", False):
                return  # its connection moved on: the process it went to logs this request
            record = request_record(sniffer, route, preamble, peer, start, reactor.seconds(),
                                    request)
            for observer in list(observers):
                observer(record)

        request.notifyFinish().addBoth(finished)

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        route = self.route_for(request)
        target = route.target if route is not None else None
        if isinstance(target, ResourceTarget):
            return _descend(route, target.resource, request)
        if route is not None:
            why = getattr(request, "portmux_not_passed_on", None)
            log.info("http request for {host}{path} matched whole-connection route {route}: 421{why}",
                     host=request.portmux_preamble.host or "", path=request.path.decode("latin-1"),
                     route=route.name, why=f" (not passed on: {why})" if why else "")
            return _Misdirected()  # type: ignore[no-untyped-call]
        return notFound(brief="No Such Resource", message="No route serves this host and path.")

    def render(self, request: Any) -> bytes:
        return cast(bytes, notFound().render(request))


class _Misdirected(Resource):
    """421: this request's route takes whole connections, so it needs a connection of its own."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(421)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"connection", b"close")
        return b"421 Misdirected Request: this host and path are served per connection; reconnect\n"


def _descend(route: Any, resource: IResource, request: Any) -> IResource:
    """Undo the root's segment pop, move the mount prefix to prepath, and traverse.

    At the mount point itself (``/`` or ``/app/``) a resource renders itself unless
    it has a child for the empty segment or its own ``getChild`` (e.g. File).
    """
    request.postpath.insert(0, request.prepath.pop())
    prefix = (route.match.path or "/").strip("/")
    if prefix:
        for _ in prefix.split("/"):
            if not request.postpath:
                break
            request.prepath.append(request.postpath.pop(0))
    if request.postpath == [b""] and _renders_at_mount_point(resource):
        request.prepath.append(request.postpath.pop())
        return resource
    return cast(IResource, getChildForRequest(resource, request))


def _renders_at_mount_point(resource: Any) -> bool:
    """True for resources that would only 404 on the empty segment."""
    if getattr(resource, "isLeaf", False):
        return True
    children = getattr(resource, "children", {})
    if b"" in children:
        return False
    return getattr(type(resource), "getChild", None) is Resource.getChild


class _Site(Site):
    """A Site whose HTTP/1.x channels bound pipelined answers (portmux.targets.http_channel)
    and refuse ambiguous or oversized heads (portmux.targets._http_front)."""

    def http1_channel(self, addr: Any) -> Any:
        """A GuardedChannel built the way Site.buildProtocol builds its channels."""
        self.protocol = GuardedChannel  # type: ignore[method-assign]  # read by buildProtocol, this call only
        try:
            return self.buildProtocol(addr)  # type: ignore[no-untyped-call]
        finally:
            del self.protocol


def dispatching_site(mux: Any) -> Site:
    """The shared Site whose root dispatches per request over ``mux``'s routes."""
    site = _Site(_Dispatcher(mux), reactor=mux.reactor)  # type: ignore[no-untyped-call]
    site.requestFactory = RoutedRequest
    site.displayTracebacks = False
    site.portmux_mux = mux  # type: ignore[attr-defined]  # the admin pages find the multiplexer through request.site
    return site
