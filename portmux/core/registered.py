# -*- test-case-name: tests.core.test_registered,tests.core.test_routing,tests.control.test_registry -*-
"""The registered layer of a Router: worker routes, added and removed one at a time.

An immutable, persistent index (pyrsistent maps): adding or removing a route costs
O(log n) and returns a new layer sharing everything else with the old one, so a
connection keeps classifying against the snapshot it was accepted with. Lookups go
by key — service name, host, SNI, path prefix, net.tcp Via — never by scanning.
The order within the layer is ``specificity`` (most specific first), the order the
Router gives registered routes ahead of its static ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

from pyrsistent import PMap, pmap

from portmux.core.preamble import Preamble
from portmux.protocols import tcpmux as naming
from portmux.protocols.nmf import BaseAddress, parse_base_address

__all__ = ["RegisteredLayer", "specificity"]

Entry = tuple[tuple[Any, ...], Any]  # (specificity key, route)
ANY = ("any",)
_EMPTY: PMap[Any, Any] = pmap()


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
    return (_pattern_rank(match.sni), _pattern_rank(match.host),
            -len((match.path or "").rstrip("/")), match.describe())


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


def _insert(entries: tuple[Entry, ...], entry: Entry) -> tuple[Entry, ...]:
    keys = [key for key, _ in entries]
    at = _bisect(keys, entry[0])
    return entries[:at] + (entry,) + entries[at:]


def _bisect(keys: list[Any], key: Any) -> int:
    low, high = 0, len(keys)
    while low < high:
        middle = (low + high) // 2
        if keys[middle] < key:
            low = middle + 1
        else:
            high = middle
    return low


def _remove(entries: tuple[Any, ...], route: Any) -> tuple[Any, ...]:
    return tuple(entry for entry in entries if entry[-1] is not route)


class RegisteredLayer:
    """Registered routes indexed for ``Router.select``; ``with_route``/``without`` make new layers."""

    __slots__ = ("_buckets", "_by_name", "_newest", "_routes", "_services", "_targets", "_via")

    def __init__(self) -> None:
        self._by_name: PMap[str, Any] = _EMPTY
        # primary key -> path key -> entries in specificity order
        self._buckets: PMap[tuple[str, ...], PMap[str | None, tuple[Entry, ...]]] = _EMPTY
        # service base -> entries in specificity order; and (version, route) newest first
        self._services: PMap[str, tuple[Entry, ...]] = _EMPTY
        self._newest: PMap[str, tuple[tuple[tuple[int, ...], Any], ...]] = _EMPTY
        # (rank, path) -> (specificity, base address, route)
        self._via: PMap[tuple[int, str], tuple[tuple[Any, BaseAddress, Any], ...]] = _EMPTY
        self._targets: PMap[int, int] = _EMPTY  # id(target) -> routes using it
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
        key = specificity(match)
        layer._by_name = layer._by_name.set(route.name, route)
        uses = layer._targets.get(id(route.target), 0)
        layer._targets = layer._targets.set(id(route.target), uses + 1)
        if match.via is not None:
            base = parse_base_address(match.via)
            slot = (base.rank, base.path)
            entries = layer._via.get(slot, ())
            at = _bisect([entry[0] for entry in entries], key)
            layer._via = layer._via.set(slot, entries[:at] + ((key, base, route),) + entries[at:])
            return layer
        primary, path = primary_key(match), path_key(match)
        paths = layer._buckets.get(primary, _EMPTY)
        paths = paths.set(path, _insert(paths.get(path, ()), (key, route)))
        layer._buckets = layer._buckets.set(primary, paths)
        if primary[0] == "service":
            layer._set_service(primary[1], _insert(layer._services.get(primary[1], ()), (key, route)))
        return layer

    def _set_service(self, base: str, entries: tuple[Entry, ...]) -> None:
        """File ``entries`` (specificity order) under ``base``, with their newest-first ranking."""
        if not entries:
            self._services = self._services.remove(base)
            self._newest = self._newest.remove(base)
            return
        self._services = self._services.set(base, entries)
        named = [(naming.parse_pattern(route.match.service), route) for _, route in entries]
        ranked = sorted(((name.version, route) for name, route in named), key=lambda e: e[0], reverse=True)
        self._newest = self._newest.set(base, tuple(ranked))

    def without(self, name: str) -> RegisteredLayer:
        """A new layer without the route named ``name`` (the same layer if there is none)."""
        route = self._by_name.get(name)
        if route is None:
            return self
        layer = self._copy()
        match = route.match
        layer._by_name = layer._by_name.remove(name)
        uses = layer._targets[id(route.target)] - 1
        layer._targets = (layer._targets.set(id(route.target), uses) if uses
                          else layer._targets.remove(id(route.target)))
        if match.via is not None:
            base = parse_base_address(match.via)
            slot = (base.rank, base.path)
            entries = _remove(layer._via[slot], route)
            layer._via = layer._via.set(slot, entries) if entries else layer._via.remove(slot)
            return layer
        primary, path = primary_key(match), path_key(match)
        paths = layer._buckets[primary]
        entries = _remove(paths[path], route)
        paths = paths.set(path, entries) if entries else paths.remove(path)
        layer._buckets = layer._buckets.set(primary, paths) if paths else layer._buckets.remove(primary)
        if primary[0] == "service":
            layer._set_service(primary[1], _remove(layer._services[primary[1]], route))
        return layer

    def uses_target(self, target: object) -> bool:
        """True when some route of this layer sends to ``target``."""
        return id(target) in self._targets

    def routes(self) -> tuple[Any, ...]:
        """Every route, most specific first (computed once per layer, on demand)."""
        if self._routes is None:
            self._routes = tuple(sorted(self._by_name.values(), key=lambda r: specificity(r.match)))
        return self._routes

    # -- lookups -------------------------------------------------------------

    def candidates(self, preamble: Preamble) -> Iterator[Any]:
        """The non-Via routes that may accept ``preamble``, in specificity order."""
        buckets = self._buckets
        if not buckets:
            return iter(())
        path = preamble.path
        wanted: set[str] | None = None
        found: list[tuple[Entry, ...]] = []
        for primary in preamble_keys(preamble):
            paths = buckets.get(primary)
            if paths is None:
                continue
            if path is None:
                found.extend(entries for key, entries in paths.items() if key is None)
                continue
            if wanted is None:
                wanted = path_candidates(path)
            if len(paths) <= len(wanted) + 1:
                found.extend(entries for key, entries in paths.items() if key is None or key in wanted)
            else:
                found.extend(paths[key] for key in (None, *wanted) if key in paths)
        if len(found) == 1:
            return (route for _, route in found[0])
        return (route for _, route in heapq.merge(*found, key=lambda entry: entry[0]))

    def via_bucket(self, rank: int, prefix: str) -> Iterator[tuple[BaseAddress, Any]]:
        """(base address, route) for the Via routes filed under (rank, path prefix), in specificity order."""
        for _, base, route in self._via.get((rank, prefix), ()):
            yield base, route

    @property
    def has_via(self) -> bool:
        return bool(self._via)

    def newest(self, base: str) -> tuple[tuple[tuple[int, ...], Any], ...]:
        """(version, route) for the routes serving service ``base``, newest first."""
        return self._newest.get(base, ())

    def service_names(self, base: str) -> tuple[naming.ServiceName, ...]:
        """The registered names for service ``base`` (for refusal reasons)."""
        return tuple(naming.parse_pattern(route.match.service) for _, route in self._services.get(base, ()))
