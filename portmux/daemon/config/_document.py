# -*- test-case-name: tests.daemon.test_config -*-
"""One config file being checked, then built: routes, their targets, and the warnings about them.

Checking walks every table against its declaration (reporting everything);
building then calls each route's target kind, with the file's ``[sniff]`` settings
known, and only for values that passed their checks.
"""

from __future__ import annotations

import pkgutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portmux.core.mux import SniffSettings
from portmux.core.routing import Match, Route
from portmux.daemon.config._context import BuildContext
from portmux.daemon.config._kinds import TargetKind
from portmux.daemon.config._match import MISSING_MATCH, MatchTable
from portmux.daemon.config._problems import Reporter, describe, join_key, one_line
from portmux.daemon.config._schema import INVALID, Text, Walk, read_table, schema_of, setting

__all__ = ["Document", "RouteDecl"]


def _route_name(value: str, key_path: str, walk: Walk) -> Any:
    if not value:
        walk.problem(key_path, "must not be empty")
        return INVALID
    first = walk.claim_route_name(value, key_path.rsplit(".", 1)[0])
    if first is not None:
        walk.problem(key_path, f"duplicate route name {value!r} (first used by {first})")
        return INVALID
    return value


@dataclass(frozen=True)
class RouteTable:
    """A ``[[route]]`` table's own keys; its one target key comes from the target kinds."""

    name: str = setting(
        Text(),
        "names the route in logs, the status page and counters; unique in the file",
        check=_route_name,
        missing="missing: every route needs a unique name",
    )
    match: Match = setting(
        MatchTable(),
        "which connections",
        missing=MISSING_MATCH,
    )


_ROUTE = schema_of(RouteTable)


@dataclass(frozen=True)
class RouteDecl:
    """A route as checked: each part is INVALID where a problem was reported."""

    key_path: str
    name: Any
    match: Any
    kind: TargetKind | None
    value: Any


class Document:
    """The Walk for one file: reports problems with lines, reads and builds its routes."""

    def __init__(
        self, report: Reporter, reactor: Any, base_dir: Path, kinds: Mapping[str, TargetKind]
    ) -> None:
        self.report = report
        self.reactor = reactor
        self.base_dir = base_dir
        self.kinds = kinds
        self.sniff_settings = SniffSettings()
        self.probes: Sequence[Any] | None = None
        self._route_names: dict[str, str] = {}
        self._known_protocols: frozenset[str] | None = None

    def problem(self, key_path: str, message: str) -> None:
        self.report.problem(key_path, message)

    def warn(self, key_path: str, message: str) -> None:
        self.report.warn(key_path, message)

    def known_protocols(self) -> frozenset[str]:
        """Every probe's name (drop-in plugins included), and ``unknown``."""
        if self._known_protocols is None:
            from portmux.protocols import all_probes

            with warnings.catch_warnings():  # twisted.plugin's path-cache chatter
                warnings.simplefilter("ignore")
                names = frozenset(str(p.name) for p in all_probes())
            self._known_protocols = names | {"unknown"}
        return self._known_protocols

    def claim_route_name(self, name: str, key_path: str) -> str | None:
        first = self._route_names.setdefault(name, key_path)
        return None if first == key_path else first

    # checking

    def read_routes(self, tables: list[Any], key_path: str) -> tuple[RouteDecl, ...]:
        """Check ``[[route]]``-shaped tables (at any depth); nothing is built yet."""
        out = []
        for i, table in enumerate(tables):
            path = join_key(key_path, i)
            if not isinstance(table, dict):
                self.problem(path, f"expected a table, got {describe(table)}")
                continue
            out.append(self.read_route(table, path))
        return tuple(out)

    def read_route(self, table: dict[str, Any], path: str) -> RouteDecl:
        """Check one ``[[route]]``-shaped table at ``path`` (also used for routes stored in etcd)."""
        names = ", ".join(self.kinds)
        values, _ = read_table(
            _ROUTE, table, path, self, extra=self.kinds,
            expected=f"expected name, match and one target: {names}",
        )
        targets = [key for key in table if key in self.kinds]
        kind: TargetKind | None = None
        value: Any = INVALID
        if not targets:
            self.problem(path, f"missing target: add one of {names}")
        elif len(targets) > 1:
            self.problem(
                join_key(path, targets[1]), f"more than one target ({', '.join(targets)}); keep exactly one"
            )
        else:
            kind = self.kinds[targets[0]]
            value = kind.value.read(table[kind.name], join_key(path, kind.name), self)
        return RouteDecl(path, values["name"], values["match"], kind, value)

    # building

    def build_routes(self, decls: Sequence[RouteDecl]) -> list[Route]:
        """Build the checked routes of one level, then warn about routes never chosen."""
        routes = [r for r in (self._build_route(d) for d in decls) if r is not None]
        self._unreachable({d.name: d.key_path for d in decls}, routes)
        return routes

    def _build_route(self, decl: RouteDecl) -> Route | None:
        if decl.kind is None or decl.value is INVALID:
            return None
        target = self._build_target(decl, decl.kind)
        if target is None or decl.name is INVALID or decl.match is INVALID:
            return None
        if decl.match.path is not None and not getattr(target, "per_request", decl.kind.per_request):
            self.warn(
                join_key(decl.key_path, "match.path"),
                f"a {decl.kind.name} target is chosen per connection from its first HTTP request; "
                "later keep-alive requests for other paths go to it too",
            )
        refusal = getattr(target, "cannot_serve", None)  # a target that knows it cannot
        reason = refusal(decl.match) if refusal is not None else None
        if reason:
            self.problem(join_key(decl.key_path, "match"), reason)
            return None
        return Route(str(decl.name), decl.match, target)

    def _build_target(self, decl: RouteDecl, kind: TargetKind) -> object | None:
        key = join_key(decl.key_path, kind.name)
        build = kind.build
        if isinstance(build, str):
            try:
                build = pkgutil.resolve_name(build)
            except Exception as e:  # noqa: BLE001 - reported as "not available"
                self.problem(key, f"target {kind.name!r} is not available: {one_line(e)}")
                return None
        ctx = BuildContext(
            self.reactor, self.report.filename, decl.key_path, self.base_dir, kind.name, self,
            sniff_settings=self.sniff_settings, probes=self.probes,
        )
        before = len(self.report.errors)
        try:
            target: object | None = build(decl.value, ctx)
        except ImportError as e:
            self.problem(key, f"target {kind.name!r} is not available: {one_line(e)}")
            return None
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            self.problem(key, one_line(e))
            return None
        if len(self.report.errors) > before:
            return None
        if target is None:
            self.problem(key, f"target {kind.name!r} could not be built")
        return target

    def _unreachable(self, paths: Mapping[Any, str], routes: Sequence[Route]) -> None:
        """Warn about routes an earlier route always takes first."""
        seen: dict[Match, str] = {}
        catch_all: str | None = None
        first_silent: str | None = None
        first_default: str | None = None
        for route in routes:
            path = paths.get(route.name, "route")
            match = route.match
            if match.silent:
                if first_silent is not None:
                    self.warn(path, f"route {route.name!r} is never chosen: {first_silent} already takes silent connections")
                elif not match.network:
                    first_silent = path
                continue
            if match.default:
                if first_default is not None:
                    self.warn(path, f"route {route.name!r} is never chosen: {first_default} already takes the rest")
                elif not match.network:
                    first_default = path
                continue
            if catch_all is not None:
                self.warn(path, f"route {route.name!r} is never chosen: {catch_all} matches every connection first")
            elif match in seen:
                self.warn(path, f"route {route.name!r} is never chosen: {seen[match]} has the same match")
            else:
                seen[match] = path
            if match == Match() and catch_all is None:
                catch_all = path
