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
from twisted.web.http import H2_ENABLED
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Site
from zope.interface import directlyProvides, implementer, providedBy

from portmux import _twisted
from portmux.core import refusal
from portmux.core.interfaces import ITarget
from portmux.core.routing import normalize_name, peer_ip
from portmux.targets.http_channel import BoundedChannel


@implementer(ITarget)
class ResourceTarget:
    """Mounts ``resource`` at its route's host and path prefix."""

    kind = "resource"

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
        transport = connection.transport
        h2 = connection.preamble.http_version == "HTTP/2"  # switched to by ALPN
        if _prior_knowledge_h2(connection.preamble, transport):
            if not self.h2_enabled:
                connection.refuse(
                    refusal.UNAVAILABLE, "HTTP/2 needs the h2 extra (pip install portmux[h2])"
                )
                return None
            transport = PriorKnowledgeH2(transport)
            h2 = True
        mux = connection.mux
        site = mux.shared("portmux.targets.resource.site", dispatching_site)
        site.resource.remember(transport, connection.preamble)
        timeouts = getattr(mux, "timeouts", None)
        if timeouts is not None:
            site.timeOut = timeouts.client_idle or None  # keep-alive idle limit
        channel = site.buildProtocol(connection.peer) if h2 else site.http1_channel(connection.peer)
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


def _request_preamble(request: Any, preambles: Any, by_address: Any) -> Any:
    """The connection's preamble, with this request's host and path."""
    channel = _twisted.stream_connection(request.channel)  # HTTP/2 streams: their connection
    transport = getattr(channel, "transport", None)
    if transport is None:  # an HTTP/2 stream without the fast path: find it by addresses
        transport = by_address.get(_address_key(request.getHost(), request.getClientAddress()))
    base = preambles.get(transport)
    host = request.getHeader(b"host")
    if host is not None:
        host = normalize_name(host.decode("latin-1").rsplit(":", 1)[0].strip("[]"))
    path = request.path.decode("latin-1")
    if base is None:
        from portmux.core.preamble import Preamble

        base = Preamble(protocol="http")
    return base.replace(host=host or base.host, path=path)


class _Dispatcher(Resource):
    """Root resource that picks the first resource route matching each request."""

    def __init__(self, mux: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._mux = mux
        self._preambles: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        # Without _twisted.FAST_PATHS an HTTP/2 stream does not lead to its transport.
        self._by_address: weakref.WeakValueDictionary[Any, Any] = weakref.WeakValueDictionary()

    def remember(self, transport: Any, preamble: Any) -> None:
        """Record the preamble of a connection about to be served by this Site."""
        try:
            self._preambles[transport] = preamble
        except TypeError:  # a transport that cannot be weakly referenced
            return
        if not _twisted.FAST_PATHS:
            key = _address_key(transport.getHost(), transport.getPeer())
            self._by_address[key] = transport

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        preamble = _request_preamble(request, self._preambles, self._by_address)
        ip = peer_ip(request.getClientAddress())
        for route in self._mux.router.static_routes:  # registered routes are never resources
            target = route.target
            if isinstance(target, ResourceTarget) and route.match.accepts(preamble, ip):
                return _descend(route, target.resource, request)
        return notFound(brief="No Such Resource", message="No route serves this host and path.")

    def render(self, request: Any) -> bytes:
        return cast(bytes, notFound().render(request))


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
    """A Site whose HTTP/1.x channels bound pipelined answers (portmux.targets.http_channel)."""

    def http1_channel(self, addr: Any) -> Any:
        """A BoundedChannel built the way Site.buildProtocol builds its channels."""
        self.protocol = BoundedChannel  # type: ignore[method-assign,assignment]  # read by buildProtocol, this call only
        try:
            return self.buildProtocol(addr)  # type: ignore[no-untyped-call]
        finally:
            del self.protocol


def dispatching_site(mux: Any) -> Site:
    """The shared Site whose root dispatches per request over ``mux``'s routes."""
    site = _Site(_Dispatcher(mux))  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    site.portmux_mux = mux  # type: ignore[attr-defined]  # the admin pages find the multiplexer through request.site
    return site
