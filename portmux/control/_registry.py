# -*- test-case-name: tests.control.test_registry -*-
"""Routes registered at run time by workers: their matches, reservations, groups, conflicts.

A worker registers a ``Match`` in the words of a config route's ``match`` table
(``portmux.control._keys`` reads it off the wire); one ``Reservation`` type serves
the config's ``[[reservation]]`` tables and the registry. A registration lives as long as
the control connection that made it. Workers of one uid registering the same
(match, mode) form a group; connections are balanced across its members. See
docs/workers.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from portmux.control._capture import captured
from portmux.core.registered import RegisteredLayer, specificity
from portmux.core.routing import Match, Route, Router
from portmux.protocols import tcpmux as naming
from portmux.protocols.nmf import parse_base_address

__all__ = [
    "MODES",
    "Group",
    "Member",
    "Owner",
    "RegistrationError",
    "Registry",
    "Reservation",
    "RouteSink",
    "route_name",
    "specificity",
]

log = Logger(namespace="portmux")

MODES = ("proxy", "handoff")


class RegistrationError(Exception):
    """A registration refused; ``code`` is a short CamelCase name sent to the worker."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Reservation:
    """Config ``[[reservation]]``: registrations whose match lies within ``match`` belong to ``uids``."""

    match: Match
    uids: tuple[int, ...]

    def refuses(self, uid: int, match: Match) -> bool:
        """True when ``match`` is in this reservation's space and ``uid`` is not one of its owners."""
        return uid not in self.uids and self.match.covers(match)


def route_name(mode: str, match: Match) -> str:
    """A registered route's name: ``handoff:protocol=http,host=*,path=/api``."""
    return f"{mode}:{match.describe(',')}"


class Owner(Protocol):
    """The control connection a registration belongs to."""

    pid: int
    uid: int
    gid: int
    label: str


@dataclass(eq=False)
class Member:
    """One worker's part in a group: its owner, and for proxy mode its endpoint.

    A handoff member holds nothing of its own, so one connection's handoff members
    are one shared object (see ``Registry._member``): fewer objects per route.
    """

    owner: Owner
    endpoint: str | None = None
    target: Any = None  # ProxyTarget for proxy mode


@dataclass(eq=False)
class Group:
    """Every worker serving one (match, mode); they share one uid.

    ``members`` is an immutable tuple, replaced on change: a group with one handoff
    member shares its owner's one-member tuple with that owner's other groups.
    """

    match: Match
    mode: str
    uid: int
    members: tuple[Member, ...] = ()
    target: Any = None
    route: Any = None  # the Route published for this group, made once
    _turn: int = 0

    @property
    def name(self) -> str:
        return route_name(self.mode, self.match)

    def candidates(self) -> list[Member]:
        """The members in round-robin order starting at the next turn."""
        members = list(self.members)
        if not members:
            return members
        start = self._turn % len(members)
        self._turn += 1
        return members[start:] + members[:start]


class RouteSink(Protocol):
    """Where registered routes go (the Multiplexer): one route added or removed per change."""

    def add_registered_route(self, route: Route) -> None: ...

    def remove_registered_route(self, route: Route) -> None: ...


class Registry:
    """Live registrations; each change adds or removes one route in ``publish``.

    ``publish`` is a ``RouteSink`` (O(log n) per change), or a callable given the
    whole list after each change (simple, O(n): for tests and small embedders).
    ``max_per_owner`` caps the registrations one control connection may hold.
    ``group_type`` is the Group subclass made per (match, mode): the control socket's
    is also the route's target, and ``make_target`` then returns the group itself.
    """

    def __init__(
        self,
        publish: RouteSink | Callable[[list[Route]], None],
        reservations: Iterable[Reservation] = (),
        make_target: Callable[[Group], Any] | None = None,
        make_proxy: Callable[[str], Any] | None = None,
        max_per_owner: int | None = None,
        group_type: type[Group] | None = None,
    ) -> None:
        self._publish = publish
        self._group_type = Group if group_type is None else group_type
        self.reservations = tuple(reservations)
        self._make_target = make_target
        self._make_proxy = make_proxy
        self.max_per_owner = max_per_owner
        self.groups: dict[Match, Group] = {}
        self._layer = RegisteredLayer()  # this registry's routes alone, for capture checks
        self._owned: dict[int, dict[Match, Group]] = {}  # id(owner) -> its groups
        self._solo: dict[int, dict[str | None, tuple[Member]]] = {}  # id(owner) -> endpoint -> (member,)
        self._families: dict[tuple[str, ...], dict[int, dict[Match, Group]]] = {}  # family -> uid -> groups

    def owned(self, owner: Owner) -> int:
        """How many registrations ``owner`` holds."""
        return len(self._owned.get(id(owner), ()))

    def register(self, owner: Owner, match: Match, mode: str, endpoint: str | None = None) -> Group:
        """Add ``owner`` to the group for (match, mode); raise RegistrationError if refused."""
        if mode not in MODES:
            raise RegistrationError("BadMode", f"mode must be one of {MODES}")
        if mode == "proxy" and not endpoint:
            raise RegistrationError("BadMode", "proxy mode needs the worker's 'endpoint'")
        text = match.describe(",")
        granted = False
        for reservation in self.reservations:
            if reservation.refuses(owner.uid, match):
                raise RegistrationError(
                    "AddressReserved",
                    f"{text} is reserved for uids {sorted(reservation.uids)}; uid {owner.uid} may not register it",
                )
            granted = granted or reservation.match.covers(match)
        if self.max_per_owner is not None and self.owned(owner) >= self.max_per_owner:
            raise RegistrationError(
                "TooManyRegistrations",
                f"this connection already holds {self.max_per_owner} registrations "
                "([control] max_registrations); open another connection or unregister some")
        group = self.groups.get(match)
        if group is not None:
            if group.uid != owner.uid:
                raise RegistrationError(
                    "ConflictingRegistration", f"{text} is already registered by uid {group.uid}")
            if group.mode != mode:
                raise RegistrationError(
                    "ConflictingRegistration",
                    f"{text} is already registered in {group.mode} mode; a group has one mode",
                )
            if any(m.owner is owner for m in group.members):
                raise RegistrationError("AlreadyRegistered", f"{text} is already registered by this connection")
        elif not granted:
            self._refuse_capture(owner.uid, match, mode)
        solo = self._member(owner, mode, endpoint)
        if group is None:
            group = self._group_type(match, mode, owner.uid, solo)
            group.target = self._make_target(group) if self._make_target else None
            group.route = Route(group.name, match, group.target)
            self.groups[match] = group
            self._families.setdefault(family(match), {}).setdefault(owner.uid, {})[match] = group
            self._added(group)
        else:
            group.members += solo
        self._owned.setdefault(id(owner), {})[match] = group
        return group

    def _member(self, owner: Owner, mode: str, endpoint: str | None) -> tuple[Member]:
        """``(member,)`` for ``owner`` joining a group: a proxy member gets its own target; handoff
        members hold nothing else, so one per (owner, endpoint) is shared by all its groups."""
        if mode == "proxy" and self._make_proxy is not None:
            member = Member(owner, endpoint, self._make_proxy(endpoint or ""))
            start = getattr(member.target, "start", None)
            if start is not None:
                start()
            return (member,)
        shared = self._solo.setdefault(id(owner), {})
        solo = shared.get(endpoint)
        if solo is None or solo[0].owner is not owner:
            solo = shared[endpoint] = (Member(owner, endpoint),)
        return solo

    def _refuse_capture(self, uid: int, match: Match, mode: str) -> None:
        """Raise AddressReserved when ``match`` would take another uid's connections."""
        others = [groups for other, groups in self._families.get(family(match), {}).items() if other != uid]
        if not others:
            return
        new = Route(route_name(mode, match), match, None)
        layer = self._layer
        before = Router((), layer)
        after = Router((), layer.with_route(new))
        for groups in others:
            for group in groups.values():
                if captured(before, after, new, group.route):
                    raise RegistrationError(
                        "AddressReserved",
                        f"{match.describe(',')} would take connections that reach {group.name} "
                        f"registered by uid {group.uid}; only a [[reservation]] granting uid {uid} "
                        "this space allows it")

    def unregister(self, owner: Owner, match: Match) -> bool:
        """Remove ``owner`` from ``match``'s group; True if it was a member."""
        group = self.groups.get(match)
        if group is None:
            return False
        kept = [m for m in group.members if m.owner is not owner]
        if len(kept) == len(group.members):
            return False
        self._drop([m for m in group.members if m.owner is owner])
        group.members = tuple(kept)
        owned = self._owned.get(id(owner), {})
        owned.pop(match, None)
        if not owned:
            self._owned.pop(id(owner), None)
            self._solo.pop(id(owner), None)
        if not kept:
            self._forget(group)
        return True

    def unregister_all(self, owner: Owner) -> list[Match]:
        """Drop every registration of ``owner`` at once (its connection is gone)."""
        gone: list[Match] = []
        self._solo.pop(id(owner), None)
        for match, group in self._owned.pop(id(owner), {}).items():
            mine = [m for m in group.members if m.owner is owner]
            if not mine:
                continue
            self._drop(mine)
            gone.append(match)
            group.members = tuple(m for m in group.members if m.owner is not owner)
            if not group.members:
                self._forget(group)
        return gone

    def _forget(self, group: Group) -> None:
        del self.groups[group.match]
        by_uid = self._families[family(group.match)]
        mine = by_uid[group.uid]
        del mine[group.match]
        if not mine:
            del by_uid[group.uid]
        self._removed(group)

    def _ordered(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: specificity(g.match))

    def routes(self) -> list[Route]:
        """One route per group, most specific first."""
        return [g.route for g in self._ordered()]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready listing of the groups and their members."""
        return [
            {
                "name": g.name,
                "match": g.match.to_keys(),
                "mode": g.mode,
                "uid": g.uid,
                "members": [
                    {"pid": m.owner.pid, "uid": m.owner.uid, "endpoint": m.endpoint}
                    for m in g.members
                ],
            }
            for g in self._ordered()
        ]

    def _drop(self, members: list[Member]) -> None:
        for member in members:
            stop = getattr(member.target, "stop", None)
            if stop is not None:
                try:
                    stop()
                except Exception:  # noqa: BLE001 - one bad target must not keep others alive
                    log.failure("stopping {target} failed", target=member.target)

    def _added(self, group: Group) -> None:
        self._layer = self._layer.with_route(group.route)
        add = getattr(self._publish, "add_registered_route", None)
        if add is not None:
            add(group.route)
        else:
            self._publish(self.routes())  # type: ignore[operator]

    def _removed(self, group: Group) -> None:
        self._layer = self._layer.without(group.route.name)
        remove = getattr(self._publish, "remove_registered_route", None)
        if remove is not None:
            remove(group.route)
        else:
            self._publish(self.routes())  # type: ignore[operator]


def family(match: Match) -> tuple[str, ...]:
    """Registrations that can compete for connections share a family: a service
    namespace, a Via scheme, or every other (host/SNI/path) registration."""
    if match.service is not None:
        return ("service", naming.parse_pattern(match.service).namespace)
    if match.via is not None:
        return ("via", parse_base_address(match.via).scheme)
    return ("name",)
