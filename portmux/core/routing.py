# -*- test-case-name: tests.control.test_registry,tests.core.test_mux,tests.core.test_routing,tests.core.test_routing_attributes,tests.daemon.test_config -*-
"""Routes, their match predicates, and the Router that picks one for a preamble."""

from __future__ import annotations

import copy
import heapq
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from portmux.core.preamble import Preamble
from portmux.core.registered import RegisteredLayer
from portmux.protocols import tcpmux as naming
from portmux.protocols.nmf import BaseAddress, ViaIndex, lookup_via, parse_base_address
from portmux.protocols.tcpmux import ServiceIndex

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ATTRIBUTE_KEYS = (
    "user", "database", "request", "command", "client_id", "level", "cookie", "version",
)
"""Match keys for attributes of the later protocols; ``level`` is an int, the rest strings."""
MATCH_KEYS = (
    "protocol", "sni", "host", "alpn", "path", "service", "via", *ATTRIBUTE_KEYS,
    "network", "silent", "default",
)
"""The keys of a route's ``match``, in the order they are shown."""


def normalize_name(name: str) -> str:
    """Lower-case a host name and strip one trailing dot."""
    name = name.lower()
    return name.removesuffix(".")


def host_pattern_matches(pattern: str, name: str | None) -> bool:
    """Match ``name`` against an exact name, ``*.suffix`` (any depth) or ``*``."""
    if name is None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def host_pattern_covers(pattern: str, name: str) -> bool:
    """True when every host ``name`` (itself maybe a ``*.`` pattern) stands for is one ``pattern`` takes."""
    if pattern == name or pattern == "*":
        return True
    if name.startswith("*"):
        return pattern.startswith("*.") and name.endswith(pattern[1:]) and name != "*"
    return host_pattern_matches(pattern, name)


def path_prefix_matches(prefix: str, path: str | None) -> bool:
    """Match a path prefix on segment boundaries: ``/app/`` and ``/app`` both take ``/app/x``."""
    if path is None:
        return False
    if prefix in ("", "/"):
        return True
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")


def peer_ip(address: object) -> str:
    """The IP text of a Twisted address, or '' for non-IP (UNIX) peers."""
    return str(getattr(address, "host", "") or "")


@dataclass(frozen=True)
class Match:
    """A predicate over a Preamble and the peer's IP; unset fields match anything.

    ``silent`` matches connections that sent nothing before the silence timeout;
    ``default`` matches when no other route did.
    """

    protocol: str | None = None
    sni: str | None = None
    host: str | None = None
    alpn: str | None = None
    path: str | None = None
    service: str | None = None
    via: str | None = None
    # Attributes of the protocols added by issue 15 (see docs/config.md).
    user: str | None = None
    database: str | None = None
    request: str | None = None
    command: str | None = None
    client_id: str | None = None
    level: int | None = None
    cookie: str | None = None
    version: str | None = None
    network: tuple[Network, ...] = ()
    silent: bool = False
    default: bool = False
    _checks: tuple[tuple[int, Any], ...] = field(default=(), init=False, repr=False, compare=False)
    _specificity: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_checks", tuple(self._build_checks()))

    def _build_checks(self) -> Iterable[tuple[int, Any]]:
        """(check number, argument) pairs for the set fields, in MATCH_KEYS order.

        Data, not closures: the arguments are strings, ints and tuples of them, which
        CPython stops tracking for garbage collection, so 10,000 registered routes do
        not lengthen every full collection (issue 11). ``_CHECKS`` holds the functions.
        """
        if self.protocol is not None:
            yield (_PROTOCOL, self.protocol.lower())
        if self.sni is not None:
            yield (_SNI, normalize_name(self.sni))
        if self.host is not None:
            yield (_HOST, normalize_name(self.host))
        if self.alpn is not None:
            yield (_ALPN, self.alpn)
        if self.path is not None:
            yield (_PATH, self.path)
        if self.service is not None:
            try:
                service = naming.parse_pattern(self.service)
            except naming.MalformedName as error:
                raise ValueError(f"service {self.service!r}: {error}") from None
            yield (_SERVICE, (service.base, str(service), service.base + "/", service.is_pattern,
                              service.namespace, service.name, service.version))
        if self.via is not None:
            try:
                base = parse_base_address(self.via)
            except ValueError as error:
                raise ValueError(f"via: {error}") from None
            yield (_VIA, (base.scheme, base.host, base.port, base.path, base.rank))
        yield from self._attribute_checks()
        if self.network:
            yield (_NETWORK, self.network)

    def _attribute_checks(self) -> Iterable[tuple[int, Any]]:
        """Exact matches on postgres user/database/request, redis command, mqtt, rdp, version."""
        if self.user is not None:
            yield (_USER, self.user)
        if self.database is not None:
            yield (_DATABASE, self.database)
        if self.request is not None:
            yield (_REQUEST, self.request.lower())
        if self.command is not None:
            yield (_COMMAND, self.command.upper())
        if self.client_id is not None:
            yield (_CLIENT_ID, self.client_id)
        if self.level is not None:
            yield (_LEVEL, self.level)
        if self.cookie is not None:
            yield (_COOKIE, self.cookie.lower())
        if self.version is not None:
            yield (_VERSION, self.version.lower())

    def _argument(self, check: int) -> Any:
        for number, argument in self._checks:
            if number == check:
                return argument
        return None

    @property
    def service_version(self) -> tuple[int, ...]:
        """The version of the service name this route serves (() when none, or no service)."""
        argument = self._argument(_SERVICE)
        return () if argument is None else argument[6]

    @property
    def via_base(self) -> BaseAddress | None:
        """The parsed Via base address, or None (made on demand: routes keep only its fields)."""
        argument = self._argument(_VIA)
        return None if argument is None else BaseAddress(*argument)

    def canonical(self) -> Match:
        """The same match with names in their one canonical spelling (for equality)."""
        changes: dict[str, str] = {}
        if self.protocol is not None:
            changes["protocol"] = self.protocol.lower()
        for name in ("host", "sni"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = normalize_name(value)
        if self.service is not None:
            changes["service"] = str(naming.parse_pattern(self.service))
        if self.via is not None:
            changes["via"] = str(parse_base_address(self.via))
        return replace(self, **changes)  # type: ignore[arg-type]

    def covers(self, other: Match) -> bool:
        """True when ``other``'s address lies in the space this match reserves.

        Each address key set here (service, host, path, sni, via) must be set in
        ``other`` and lie inside; protocol, alpn and network must not contradict.
        A match without an address key covers nothing.
        """
        address = ("service", "host", "path", "sni", "via")
        if all(getattr(self, key) is None for key in address):
            return False
        for key in address:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine is not None and (theirs is None or not _KEY_COVERS[key](mine, theirs)):
                return False
        for key in ("protocol", "alpn"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine is not None and theirs is not None and mine.lower() != theirs.lower():
                return False
        if self.network and other.network:
            return any(a.overlaps(b) for a in self.network for b in other.network)
        return True

    def to_keys(self) -> dict[str, Any]:
        """The set fields as config ``match`` keys (networks as strings), JSON-ready."""
        keys: dict[str, Any] = {}
        for name in MATCH_KEYS:
            value = getattr(self, name)
            if name == "network" and value:
                keys[name] = [str(network) for network in value]
            elif value not in (None, False, ()):
                keys[name] = value
        return keys

    def describe(self, separator: str = " ") -> str:
        """A short text form for logs and the status page, e.g. ``protocol=http host=a.example``."""
        parts = []
        for name, value in self.to_keys().items():
            if value is True:
                parts.append(name)
            elif isinstance(value, list):
                parts.append(f"{name}={','.join(value)}")
            else:
                parts.append(f"{name}={value}")
        return separator.join(parts) or "any"

    def accepts(self, preamble: Preamble, ip: str = "") -> bool:
        """True when every set field accepts ``preamble`` from peer ``ip``."""
        checks = _CHECKS
        for number, argument in self._checks:
            if number == _PROTOCOL:  # the commonest check, and the one that rejects most: inline
                if preamble.protocol != argument:
                    return False
            elif not checks[number](argument, preamble, ip):
                return False
        return True

    def explain(self, preamble: Preamble, ip: str = "") -> str | None:
        """The first key (in MATCH_KEYS order) that rejects ``preamble`` from ``ip``, or None.

        ``silent`` and ``default`` are not checked here: they say when the Router asks.
        """
        for key in MATCH_KEYS[:-2]:
            value = getattr(self, key)
            if value not in (None, ()) and not Match(**{key: value}).accepts(preamble, ip):
                return key
        return None

    def accepts_peer(self, ip: str) -> bool:
        """True when the network constraint (if any) admits ``ip``."""
        return not self.network or _in_networks(ip, self.network)


_KEY_COVERS: dict[str, Callable[[str, str], bool]] = {
    "service": lambda mine, theirs: naming.parse_pattern(mine).covers(naming.parse_pattern(theirs)),
    "host": lambda mine, theirs: host_pattern_covers(normalize_name(mine), normalize_name(theirs)),
    "sni": lambda mine, theirs: host_pattern_covers(normalize_name(mine), normalize_name(theirs)),
    "path": path_prefix_matches,
    "via": lambda mine, theirs: parse_base_address(mine).covers(parse_base_address(theirs)),
}
"""Per address key: does the first value's space contain the second value's?"""


def _check_service(argument: tuple[Any, ...], preamble: Preamble, ip: str) -> bool:
    """Admit the names that may reach the route's service name (see portmux.protocols.tcpmux)."""
    base, full, versioned, is_pattern, namespace, name, version = argument
    requested = preamble.service
    if requested is None:
        return False
    if requested == base or requested == full:  # the common cases, without parsing
        return True
    if not is_pattern and not requested.lower().startswith(versioned):
        return requested.lower() in (base, full)
    try:
        return naming.ServiceName(namespace, name, version).accepts(naming.parse(requested))
    except naming.MalformedName:
        return False


def _check_via(argument: tuple[Any, ...], preamble: Preamble, ip: str) -> bool:
    return BaseAddress(*argument).accepts(preamble.via)


def _check_cookie(cookie: str, preamble: Preamble, ip: str) -> bool:
    return preamble.cookie is not None and preamble.cookie.lower() == cookie


def _check_version(version: str, preamble: Preamble, ip: str) -> bool:
    return preamble.version is not None and preamble.version.lower() == version


_CHECKS: tuple[Callable[[Any, Preamble, str], bool], ...] = (
    lambda protocol, p, ip: p.protocol == protocol,
    lambda sni, p, ip: host_pattern_matches(sni, p.sni),
    lambda host, p, ip: host_pattern_matches(host, p.host),
    lambda alpn, p, ip: alpn in p.alpn,
    lambda prefix, p, ip: path_prefix_matches(prefix, p.path),
    _check_service,
    _check_via,
    lambda user, p, ip: p.user == user,
    lambda database, p, ip: p.database == database,
    lambda request, p, ip: p.request == request,
    lambda command, p, ip: p.command == command,
    lambda client_id, p, ip: p.client_id == client_id,
    lambda level, p, ip: p.level == level,
    _check_cookie,
    _check_version,
    lambda networks, p, ip: _in_networks(ip, networks),
)
"""Match's checks by number: shared functions over a route's (number, argument) data."""
(_PROTOCOL, _SNI, _HOST, _ALPN, _PATH, _SERVICE, _VIA, _USER, _DATABASE, _REQUEST, _COMMAND,
 _CLIENT_ID, _LEVEL, _COOKIE, _VERSION, _NETWORK) = range(len(_CHECKS))


def _in_networks(ip: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR strings (``127.128.0.0/9``, ``::1``); raises ValueError on bad input."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


@dataclass(frozen=True)
class Route:
    """A named match and the target that takes matching connections."""

    name: str
    match: Match
    target: object  # an ITarget provider

    @property
    def kind(self) -> str:
        return str(getattr(self.target, "kind", type(self.target).__name__))


class Router:
    """An immutable, ordered set of routes in two layers: registered first, then static.

    The static layer (config, ``add_route``) is indexed once per Router; the
    registered layer (workers) is a persistent ``RegisteredLayer``, so
    ``with_registered`` makes a new Router in O(1) sharing the static indexes.
    """

    def __init__(self, routes: Iterable[Route] = (), registered: RegisteredLayer | None = None) -> None:
        self.static_routes: tuple[Route, ...] = tuple(routes)
        self.registered = RegisteredLayer() if registered is None else registered
        self._all: tuple[Route, ...] | None = None
        self.silent_route: Route | None = None
        self.default_routes: tuple[Route, ...] = tuple(
            r for r in self.static_routes if r.match.default
        )
        self._ordered = tuple(
            r for r in self.static_routes if not (r.match.silent or r.match.default)
        )
        for route in self.static_routes:
            if route.match.silent and self.silent_route is None:
                self.silent_route = route
        # Service names (portmux.protocols.tcpmux): per name in route order, newest first.
        self._services: ServiceIndex[Route] = ServiceIndex(
            (r.match.service, r) for r in self._ordered
        )
        # net.tcp Via base addresses: strong > exact > weak, longest prefix, any order.
        self._via_index: ViaIndex[Route] = ViaIndex(
            (r.match.via, r) for r in self._ordered if r.match.via
        )

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route in order: registered (most specific first), then static."""
        if self._all is None:
            self._all = self.registered.routes() + self.static_routes
        return self._all

    def with_registered(self, registered: RegisteredLayer) -> Router:
        """This Router with another registered layer; the static indexes are shared, not rebuilt."""
        router = copy.copy(self)
        router.registered = registered
        router._all = None
        return router

    def select(self, preamble: Preamble, ip: str = "") -> Route | None:
        """The route for ``preamble``: by Via for net.tcp, else the first accepting one.

        A service asked for without a version gets its newest accepting version;
        a preamble carrying an ``error`` gets no route. Then the first admitting default.
        """
        if preamble.error is not None:
            return None
        registered = self.registered
        if preamble.via is not None and (self._via_index or registered.has_via):
            buckets: tuple[Callable[[int, str], Iterable[tuple[Any, Route]]], ...] = (
                (registered.via_bucket, self._via_index.bucket) if registered else (self._via_index.bucket,))
            for route in lookup_via(preamble.via, buckets):
                if route.match.accepts(preamble, ip):
                    return route
        service = preamble.service
        candidates: Iterable[Route] = self._services.candidates(service)
        if registered:
            candidates = itertools.chain(registered.candidates(preamble), candidates)
        for route in candidates:
            if route.match.accepts(preamble, ip):
                if service is None:
                    return route
                for chosen in self._ranked(service, route):
                    if chosen.match.accepts(preamble, ip):
                        return chosen
        if preamble.protocol == "http" and preamble.path is None:
            found = self._per_request_route(preamble, ip)
            if found is not None:
                return found
        for route in self.default_routes:
            if route.match.accepts_peer(ip):
                return route
        return None

    def _per_request_route(self, preamble: Preamble, ip: str) -> Route | None:
        """For an HTTP/2 connection (no request yet, so no path): the first route that routes
        each request itself (its target has ``per_request``) and would take some request on it.

        Its Site then matches every stream's host and path again, over all routes.
        """
        for route in self.routes:
            match = route.match
            if not getattr(route.target, "per_request", False) or match.default or match.silent:
                continue
            probe = preamble.replace(path=match.path or "/", via=match.via,
                                     host=preamble.host if preamble.host is not None else match.host)
            if match.accepts(probe, ip):
                return route
        return None

    def _ranked(self, service: str, route: Route) -> Iterable[Route]:
        """What to try for an accepting ``route``: its name's versions newest first over
        both layers (registered first on a tie) for an unversioned request."""
        if naming.is_versioned(service) or route.match.service is None:
            return (route,)
        if not self.registered:
            return self._services.ranked(service, route)
        name = naming.parse_pattern(route.match.service)
        if name.is_pattern:
            return (route,)
        versions = heapq.merge(self.registered.newest(name.base), self._services.newest(name.base),
                               key=lambda entry: entry[0], reverse=True)
        return (item for _, item in versions)

    def refusal_reason(self, preamble: Preamble) -> str:
        """One line saying why ``select`` found no route for ``preamble``."""
        if preamble.error is not None:
            return f"{preamble.protocol} preamble refused: {preamble.error}"
        if preamble.protocol == "tcpmux" and preamble.service is not None:
            names = self._services.names
            try:
                names += self.registered.service_names(naming.parse(preamble.service).base)
            except naming.MalformedName:
                pass
            return naming.resolution_failure(preamble.service, names)
        what = preamble.protocol
        detail = preamble.sni or preamble.host or preamble.service or preamble.via
        if detail:
            what = f"{what} {detail}"
        return f"no route for {what}"

    def select_silent(self, ip: str = "") -> Route | None:
        """The route for a connection that has sent nothing, if any admits ``ip``."""
        for route in self.static_routes:
            if route.match.silent and route.match.accepts_peer(ip):
                return route
        return None

    def with_route(self, route: Route) -> Router:
        """A new Router with ``route`` appended to the static layer."""
        return Router(self.static_routes + (route,), self.registered)

    def without(self, names: Iterable[str]) -> Router:
        """A new Router without the routes named in ``names`` (in either layer)."""
        drop = set(names)
        registered = self.registered
        for name in drop:
            registered = registered.without(name)
        return Router((r for r in self.static_routes if r.name not in drop), registered)

    def targets(self) -> tuple[object, ...]:
        """Every distinct target, in route order."""
        seen: dict[int, object] = {}
        for route in self.routes:
            seen.setdefault(id(route.target), route.target)
        return tuple(seen.values())
