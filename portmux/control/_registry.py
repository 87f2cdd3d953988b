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

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger

from portmux.core.routing import Match, Route

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


def _pattern_rank(value: str | None) -> tuple[int, int]:
    """Exact names first, then ``*.suffix`` (longest first), then ``*``, then unset."""
    if value is None:
        return (3, 0)
    if value == "*":
        return (2, 0)
    if value.startswith("*"):
        return (1, -len(value))
    return (0, 0)


def specificity(match: Match) -> tuple[Any, ...]:
    """Sort key putting the most specific registration first (the Router takes the first).

    Services and Via base addresses need none: the Router's indexes rank those.
    """
    return (_pattern_rank(match.sni), _pattern_rank(match.host),
            -len((match.path or "").rstrip("/")), match.describe())


class Owner(Protocol):
    """The control connection a registration belongs to."""

    pid: int
    uid: int
    gid: int
    label: str


@dataclass(eq=False)
class Member:
    """One worker's part in a group: its owner, and for proxy mode its endpoint."""

    owner: Owner
    endpoint: str | None = None
    target: Any = None  # ProxyTarget for proxy mode


@dataclass(eq=False)
class Group:
    """Every worker serving one (match, mode); they share one uid."""

    match: Match
    mode: str
    uid: int
    members: list[Member] = field(default_factory=list)
    target: Any = None
    _turn: Any = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return route_name(self.mode, self.match)

    def candidates(self) -> list[Member]:
        """The members in round-robin order starting at the next turn."""
        members = list(self.members)
        if not members:
            return members
        start = next(self._turn) % len(members)
        return members[start:] + members[:start]


class Registry:
    """Live registrations; every change republishes the routes through ``publish``."""

    def __init__(
        self,
        publish: Callable[[list[Route]], None],
        reservations: Iterable[Reservation] = (),
        make_target: Callable[[Group], Any] | None = None,
        make_proxy: Callable[[str], Any] | None = None,
    ) -> None:
        self._publish = publish
        self.reservations = tuple(reservations)
        self._make_target = make_target
        self._make_proxy = make_proxy
        self.groups: dict[Match, Group] = {}

    def register(self, owner: Owner, match: Match, mode: str, endpoint: str | None = None) -> Group:
        """Add ``owner`` to the group for (match, mode); raise RegistrationError if refused."""
        if mode not in MODES:
            raise RegistrationError("BadMode", f"mode must be one of {MODES}")
        if mode == "proxy" and not endpoint:
            raise RegistrationError("BadMode", "proxy mode needs the worker's 'endpoint'")
        text = match.describe(",")
        for reservation in self.reservations:
            if reservation.refuses(owner.uid, match):
                raise RegistrationError(
                    "AddressReserved",
                    f"{text} is reserved for uids {sorted(reservation.uids)}; uid {owner.uid} may not register it",
                )
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
        member = Member(owner, endpoint)
        if mode == "proxy" and self._make_proxy is not None:
            member.target = self._make_proxy(endpoint or "")
            start = getattr(member.target, "start", None)
            if start is not None:
                start()
        if group is None:
            group = Group(match, mode, owner.uid)
            group.target = self._make_target(group) if self._make_target else None
            self.groups[match] = group
            group.members.append(member)
            self._republish()
        else:
            group.members.append(member)
        return group

    def unregister(self, owner: Owner, match: Match) -> bool:
        """Remove ``owner`` from ``match``'s group; True if it was a member."""
        group = self.groups.get(match)
        if group is None:
            return False
        kept = [m for m in group.members if m.owner is not owner]
        if len(kept) == len(group.members):
            return False
        self._drop([m for m in group.members if m.owner is owner])
        group.members = kept
        if not kept:
            del self.groups[match]
            self._republish()
        return True

    def unregister_all(self, owner: Owner) -> list[Match]:
        """Drop every registration of ``owner`` at once (its connection is gone)."""
        gone: list[Match] = []
        changed = False
        for match, group in list(self.groups.items()):
            mine = [m for m in group.members if m.owner is owner]
            if not mine:
                continue
            self._drop(mine)
            gone.append(match)
            group.members = [m for m in group.members if m.owner is not owner]
            if not group.members:
                del self.groups[match]
                changed = True
        if changed:
            self._republish()
        return gone

    def _ordered(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: specificity(g.match))

    def routes(self) -> list[Route]:
        """One route per group, most specific first."""
        return [Route(g.name, g.match, g.target) for g in self._ordered()]

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

    def _republish(self) -> None:
        self._publish(self.routes())
