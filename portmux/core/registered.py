# -*- test-case-name: tests.core.test_registered,tests.core.test_routing,tests.control.test_registry -*-
"""The registered layer of a Router: worker routes, added and removed one at a time.

An immutable, persistent index (HAMTs, ``immutables.Map``): adding or removing a route costs
O(log n) and returns a new layer sharing everything else with the old one, so a
connection keeps classifying against the snapshot it was accepted with. Lookups go
by key — service name, host, SNI, path prefix, net.tcp Via — never by scanning.
The order within the layer is ``specificity`` (most specific first), the order the
Router gives registered routes ahead of its static ones.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from immutables import Map

from portmux.core.preamble import Preamble
from portmux.protocols import tcpmux as naming
from portmux.protocols.nmf import BaseAddress

__all__ = ["RegisteredLayer", "specificity"]

ANY = ("any",)
_EMPTY: Map[Any, Any] = Map()


def _pattern_rank(value: str | None) -> tuple[int, int]:
    """Exact names first, then ``*.suffix`` (longest first), then ``*``, then unset."""
    if value is None:
        return (3, 0)
    if value == "*":
        return (2, 0)
    if value.startswith("*"):
        return (1, -len(value))
    return (0, 0)


def specificity(match: Any) -> tuple[Any, ...]:
    """Sort key putting the most specific registration first (the Router takes the first).

    Services and Via base addresses need none: the Router's indexes rank those.
    """
    key: tuple[Any, ...] | None = match._specificity
    if key is None:  # computed once per Match (it is a tuple of atoms: not tracked by the GC)
        key = (_pattern_rank(match.sni), _pattern_rank(match.host),
               -len((match.path or "").rstrip("/")), match.describe())
        object.__setattr__(match, "_specificity", key)
    return key


def _by_specificity(route: Any) -> tuple[Any, ...]:
    return specificity(route.match)


def _by_version(route: Any) -> tuple[int, ...]:
    return tuple(route.match.service_version)


def _name_key(kind: str, pattern: str | None) -> tuple[str, str] | None:
    """The index key of a host or SNI pattern: exact name, ``*.suffix``, or None for any."""
    if pattern is None:
        return None
    name = pattern.lower().removesuffix(".")
    if name == "*":
        return None
    if name.startswith("*."):
        return (kind + "-suffix", name[1:])
    return (kind, name)


def primary_key(match: Any) -> tuple[str, ...]:
    """The one key a (non-Via) route is filed under: the most selective it sets."""
    if match.service is not None:
        name = naming.parse_pattern(match.service)
        return ("namespace", name.namespace) if name.is_pattern else ("service", name.base)
    return _name_key("host", match.host) or _name_key("sni", match.sni) or ANY


def path_key(match: Any) -> str | None:
    """The path prefix (without trailing ``/``) a route is filed under; None takes every path."""
    if match.path is None or match.path in ("", "/"):
        return None
    return str(match.path.rstrip("/"))


def _name_candidates(kind: str, name: str | None) -> Iterator[tuple[str, str]]:
    if name is None:
        return
    yield (kind, name)
    for index, char in enumerate(name):
        if char == "." and index:
            yield (kind + "-suffix", name[index:])


def preamble_keys(preamble: Preamble) -> Iterator[tuple[str, ...]]:
    """Every primary key a route accepting ``preamble`` may be filed under."""
    yield ANY
    requested = preamble.service
    if requested is not None:
        yield ("service", naming.base_of(requested))
        yield ("namespace", requested.strip().lower().partition("/")[0].rpartition(":")[0])
    yield from _name_candidates("host", preamble.host)
    yield from _name_candidates("sni", preamble.sni)


def path_candidates(path: str) -> set[str]:
    """The prefixes a path-prefix route must equal to take ``path`` (segment boundaries)."""
    found = {path}
    for index, char in enumerate(path):
        if char == "/":
            found.add(path[:index])
    return found


def _insert(bucket: Any, route: Any) -> Any:
    """``bucket`` with ``route`` placed before its equals in specificity order."""
    routes = _routes_of(bucket)
    at = bisect_left(routes, specificity(route.match), key=_by_specificity)
    return routes[:at] + (route,) + routes[at:]


def _routes_of(bucket: Any) -> tuple[Any, ...]:
    """A bucket's routes: a bucket of one route is that route itself (no tuple to track)."""
    if bucket is None:
        return ()
    return bucket if type(bucket) is tuple else (bucket,)


def _bucket(routes: tuple[Any, ...] | list[Any]) -> Any:
    """What a map holds for ``routes``: None for none, the route for one, else a tuple."""
    if not routes:
        return None
    return routes[0] if len(routes) == 1 else tuple(routes)


class RegisteredLayer:
    """Registered routes indexed for ``Router.select``; ``with_route``/``without`` make new layers.

    Few objects per route, because CPython's full collections walk every tracked
    object (issue 11): the maps are HAMTs (``immutables.Map``: a node per ~8 keys, no
    object per entry) and each value is a route, or a tuple of the routes sharing a key
    in ``specificity`` order (cached on the Match), never (key, route) pairs.
    """

    __slots__ = ("_buckets", "_by_name", "_newest", "_routes", "_targets", "_via")

    def __init__(self) -> None:
        self._by_name: Map[str, Any] = _EMPTY
        # Each value is a bucket: one route, or a tuple of routes (see _routes_of).
        # (primary key, path key) -> routes in specificity order
        self._buckets: Map[tuple[tuple[str, ...], str | None], Any] = _EMPTY
        # service base -> its routes, newest version first (ties in specificity order)
        self._newest: Map[str, Any] = _EMPTY
        # (rank, path) of a Via base address -> routes in specificity order
        self._via: Map[tuple[int, str], Any] = _EMPTY
        self._targets: Map[int, int] = _EMPTY  # _target_key(target) -> routes using it
        self._routes: tuple[Any, ...] | None = ()

    @classmethod
    def of(cls, routes: Iterable[Any]) -> RegisteredLayer:
        """A layer holding ``routes`` (their order is recomputed by specificity)."""
        layer = cls()
        for route in routes:
            layer = layer.with_route(route)
        return layer

    def __len__(self) -> int:
        return len(self._by_name)

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Any:
        """The route named ``name``, or None."""
        return self._by_name.get(name)

    def _copy(self) -> RegisteredLayer:
        layer = RegisteredLayer.__new__(RegisteredLayer)
        for slot in self.__slots__:
            object.__setattr__(layer, slot, getattr(self, slot))
        layer._routes = None
        return layer

    def with_route(self, route: Any) -> RegisteredLayer:
        """A new layer with ``route`` added; a route of the same name is replaced."""
        match = route.match
        if match.silent or match.default:
            raise ValueError("a registered route may not be silent or default")
        layer = self.without(route.name) if route.name in self._by_name else self._copy()
        layer._by_name = layer._by_name.set(route.name, route)
        target = _target_key(route.target)
        layer._targets = layer._targets.set(target, layer._targets.get(target, 0) + 1)
        if match.via is not None:
            base = match.via_base
            slot = (base.rank, base.path)
            layer._via = layer._via.set(slot, _bucket(_insert(layer._via.get(slot), route)))
            return layer
        primary = primary_key(match)
        bucket = (primary, path_key(match))
        layer._buckets = layer._buckets.set(bucket, _bucket(_insert(layer._buckets.get(bucket), route)))
        if primary[0] == "service":
            routes = sorted(_routes_of(layer._newest.get(primary[1])) + (route,), key=_by_specificity)
            routes.sort(key=_by_version, reverse=True)  # stable: ties stay in specificity order
            layer._newest = layer._newest.set(primary[1], _bucket(routes))
        return layer

    def without(self, name: str) -> RegisteredLayer:
        """A new layer without the route named ``name`` (the same layer if there is none)."""
        route = self._by_name.get(name)
        if route is None:
            return self
        layer = self._copy()
        match = route.match
        layer._by_name = layer._by_name.delete(name)
        target = _target_key(route.target)
        uses = layer._targets[target] - 1
        layer._targets = layer._targets.set(target, uses) if uses else layer._targets.delete(target)
        if match.via is not None:
            base = match.via_base
            layer._via = _without(layer._via, (base.rank, base.path), route)
            return layer
        primary = primary_key(match)
        layer._buckets = _without(layer._buckets, (primary, path_key(match)), route)
        if primary[0] == "service":
            layer._newest = _without(layer._newest, primary[1], route)
        return layer

    def uses_target(self, target: object) -> bool:
        """True when some route of this layer sends to ``target``."""
        return _target_key(target) in self._targets

    def routes(self) -> tuple[Any, ...]:
        """Every route, most specific first (computed once per layer, on demand)."""
        if self._routes is None:
            self._routes = tuple(sorted(self._by_name.values(), key=_by_specificity))
        return self._routes

    # -- lookups -------------------------------------------------------------

    def candidates(self, preamble: Preamble) -> Iterator[Any]:
        """The non-Via routes that may accept ``preamble``, in specificity order."""
        buckets = self._buckets
        if not buckets:
            return iter(())
        path = preamble.path
        paths: tuple[str | None, ...] = (None,) if path is None else (None, *path_candidates(path))
        found: list[tuple[Any, ...]] = []
        for primary in preamble_keys(preamble):
            for key in paths:
                bucket = buckets.get((primary, key))
                if bucket is not None:
                    found.append(_routes_of(bucket))
        if len(found) == 1:
            return iter(found[0])
        return heapq.merge(*found, key=_by_specificity)

    def via_bucket(self, rank: int, prefix: str) -> Iterator[tuple[BaseAddress, Any]]:
        """(base address, route) for the Via routes filed under (rank, path prefix), in specificity order."""
        for route in _routes_of(self._via.get((rank, prefix))):
            yield route.match.via_base, route

    @property
    def has_via(self) -> bool:
        return bool(self._via)

    def newest(self, base: str) -> Iterator[tuple[tuple[int, ...], Any]]:
        """(version, route) for the routes serving service ``base``, newest first."""
        return ((route.match.service_version, route) for route in _routes_of(self._newest.get(base)))

    def service_names(self, base: str) -> tuple[naming.ServiceName, ...]:
        """The registered names for service ``base`` (for refusal reasons)."""
        routes = sorted(_routes_of(self._newest.get(base)), key=_by_specificity)
        return tuple(naming.parse_pattern(route.match.service) for route in routes)


def _target_key(target: object) -> int:
    """id(target) rotated right by 4 bits (a bijection): ids are 16-byte aligned, and a HAMT
    hashing on the low bits would otherwise chain nodes for every target."""
    address = id(target)
    return (address >> 4) | ((address & 0xF) << 60)


def _without(table: Map[Any, Any], key: Any, route: Any) -> Map[Any, Any]:
    """``table`` with ``route`` dropped from the bucket filed under ``key`` (and the key if empty)."""
    bucket = _bucket(tuple(entry for entry in _routes_of(table[key]) if entry is not route))
    return table.delete(key) if bucket is None else table.set(key, bucket)
