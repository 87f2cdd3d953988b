# -*- test-case-name: tests.control.test_registry -*-
"""Routes registered at run time by workers: addresses, reservations, groups, conflicts.

A registration lives as long as the control connection that made it. Workers of
one uid registering the same (address, mode) form a group; connections are
balanced across its members. See docs/workers.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.logger import Logger

from portmux.core.preamble import Preamble
from portmux.core.routing import (
    Check,
    Match,
    Route,
    host_pattern_matches,
    normalize_name,
    path_prefix_matches,
)
from portmux.protocols import tcpmux as naming

log = Logger(namespace="portmux")

KINDS = ("tcpmux", "http", "tls", "nettcp")
MODES = ("proxy", "handoff")
HOST_MODES = {"strong": "+", "weak": "*", "exact": ""}
"""net.tcp host-name comparison modes and the host placeholder each uses in a base URI."""


class RegistrationError(Exception):
    """A registration refused; ``code`` is a short CamelCase name sent to the worker."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Address:
    """What a worker serves: one TCPMUX name, HTTP host+prefix, TLS SNI, or net.tcp base URI."""

    kind: str
    service: str = ""
    host: str = ""
    path: str = ""
    sni: str = ""
    host_mode: str = ""

    def __str__(self) -> str:
        if self.kind == "tcpmux":
            return f"tcpmux:{self.service}"
        if self.kind == "http":
            return f"http:{self.host}{self.path}"
        if self.kind == "tls":
            return f"tls:{self.sni}"
        host = HOST_MODES.get(self.host_mode) or self.host
        return f"net.tcp://{host}{self.path}"

    def match(self) -> Match:
        """The route Match for this address."""
        if self.kind == "tcpmux":
            return ServiceMatch(protocol="tcpmux", registered=self.service)
        if self.kind == "http":
            return Match(host=self.host, path=self.path or "/")
        if self.kind == "tls":
            return Match(protocol="tls", sni=self.sni)
        return BaseAddressMatch(base_host=self.host, base_path=self.path, host_mode=self.host_mode)

    def order(self) -> tuple[Any, ...]:
        """Sort key putting the most specific address first (the Router takes the first)."""
        if self.kind == "tcpmux":
            parsed = naming.parse(self.service)
            return (0, parsed.base, tuple(-v for v in parsed.version))
        if self.kind == "http":
            return (1, self.host.startswith("*"), -len(self.path), self.host)
        if self.kind == "tls":
            return (2, self.sni.startswith("*"), self.sni)
        rank = {"strong": 0, "exact": 1, "weak": 2}[self.host_mode]
        return (3, -len(self.path), rank, self.host)

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def parse_address(data: Any) -> Address:
    """Validate a register message's ``address`` object; raise RegistrationError why not."""
    if not isinstance(data, Mapping):
        raise RegistrationError("BadAddress", "address must be an object with a 'kind'")
    kind = data.get("kind")
    text = {k: v for k, v in data.items() if k != "kind"}
    for key, value in text.items():
        if not isinstance(value, str):
            raise RegistrationError("BadAddress", f"address field {key!r} must be a string")
    if kind == "tcpmux":
        try:
            name = naming.parse(text.get("service", ""))
        except naming.MalformedName as e:
            raise RegistrationError("BadAddress", str(e)) from None
        return Address("tcpmux", service=str(name))
    if kind == "http":
        host = normalize_name(text.get("host", "*") or "*")
        path = text.get("path", "/") or "/"
        if not path.startswith("/"):
            raise RegistrationError("BadAddress", "http path prefix must start with '/'")
        return Address("http", host=host, path=path)
    if kind == "tls":
        sni = normalize_name(text.get("sni", ""))
        if not sni:
            raise RegistrationError("BadAddress", "tls address needs an 'sni' name")
        return Address("tls", sni=sni)
    if kind == "nettcp":
        return _parse_base_uri(text.get("via", ""), text.get("host_mode", ""))
    raise RegistrationError("BadAddress", f"unknown address kind {kind!r}; use one of {KINDS}")


def _parse_base_uri(uri: str, host_mode: str) -> Address:
    parts = urlsplit(uri)
    if parts.scheme.lower() != "net.tcp" or not parts.netloc:
        raise RegistrationError("BadAddress", f"{uri!r} is not a net.tcp://host/path/ base URI")
    host = normalize_name(parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0]) if not parts.netloc.startswith("[") else parts.netloc.lower()
    derived = {"+": "strong", "*": "weak"}.get(host, "exact")
    mode = host_mode or derived
    if mode not in HOST_MODES:
        raise RegistrationError("BadAddress", f"host_mode must be one of {tuple(HOST_MODES)}")
    if mode == "exact" and host in ("+", "*"):
        raise RegistrationError("BadAddress", "exact host mode needs a host name, not + or *")
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return Address("nettcp", host="" if mode != "exact" else host, path=path.lower(), host_mode=mode)


@dataclass(frozen=True)
class ServiceMatch(Match):
    """TCPMUX names the Moniker way: a request without a version takes any version."""

    registered: str = ""

    def _build_checks(self) -> Iterable[Check]:
        yield from super()._build_checks()
        name = naming.parse(self.registered)

        def check(p: Preamble, ip: str) -> bool:
            if p.service is None:
                return False
            try:
                return name.accepts(naming.parse(p.service))
            except naming.MalformedName:
                return False

        yield check


@dataclass(frozen=True)
class BaseAddressMatch(Match):
    """A net.tcp base address: host by comparison mode, then path prefix on segments."""

    base_host: str = ""
    base_path: str = "/"
    host_mode: str = "strong"

    def _build_checks(self) -> Iterable[Check]:
        yield from super()._build_checks()
        host, path, mode = self.base_host, self.base_path, self.host_mode

        def check(p: Preamble, ip: str) -> bool:
            if p.via is None:
                return False
            parts = urlsplit(p.via)
            if parts.scheme.lower() != "net.tcp":
                return False
            if mode == "exact" and normalize_name(parts.hostname or "") != host:
                return False
            return path_prefix_matches(path, (parts.path or "/").lower())

        yield check


def reservation_covers(match: Any, address: Address) -> bool:
    """True when a reservation's match (a Match or a mapping) covers ``address``."""
    get: Callable[[str], Any]
    if isinstance(match, Mapping):
        get = match.get
    else:
        def get(key: str) -> Any:
            return getattr(match, key, None)
    service, host, path, sni, via = (get(k) for k in ("service", "host", "path", "sni", "via"))
    if service is not None:
        if address.kind != "tcpmux":
            return False
        reserved = str(service).lower()
        mine = naming.parse(address.service)
        if reserved.endswith(":*"):
            return mine.namespace == reserved[:-2]
        try:
            return naming.parse(reserved).key == mine.key
        except naming.MalformedName:
            return False
    if sni is not None:
        return address.kind == "tls" and _host_covers(normalize_name(sni), address.sni)
    if host is not None or (path is not None and address.kind == "http"):
        if address.kind != "http":
            return False
        if host is not None and not _host_covers(normalize_name(host), address.host):
            return False
        return path is None or path_prefix_matches(path, address.path)
    if via is not None:
        if address.kind != "nettcp":
            return False
        reserved_address = _parse_base_uri(str(via), "")
        if reserved_address.host_mode == "exact" and reserved_address.host != address.host:
            return False
        return path_prefix_matches(reserved_address.path, address.path)
    return False


def _host_covers(pattern: str, name: str) -> bool:
    return pattern == name or host_pattern_matches(pattern, name) or (
        pattern.startswith("*.") and name.startswith("*.") and name.endswith(pattern[1:])
    )


@dataclass(frozen=True)
class Reservation:
    """Config ``[[reservation]]``: addresses under ``match`` belong to ``uids`` only."""

    match: Any
    uids: frozenset[int]


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
    """Every worker serving one (address, mode); they share one uid."""

    address: Address
    mode: str
    uid: int
    members: list[Member] = field(default_factory=list)
    target: Any = None
    _turn: Any = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return f"{self.mode}:{self.address}"

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
        reservations: Iterable[Any] = (),
        make_target: Callable[[Group], Any] | None = None,
        make_proxy: Callable[[str], Any] | None = None,
    ) -> None:
        self._publish = publish
        self.reservations = [
            Reservation(getattr(r, "match", None) if not isinstance(r, Mapping) else r.get("match"),
                        frozenset(getattr(r, "uids", None) or (r.get("uids", ()) if isinstance(r, Mapping) else ())))
            for r in reservations
        ]
        self._make_target = make_target
        self._make_proxy = make_proxy
        self.groups: dict[Address, Group] = {}

    def register(self, owner: Owner, address: Address, mode: str, endpoint: str | None = None) -> Group:
        """Add ``owner`` to the group for (address, mode); raise RegistrationError if refused."""
        if mode not in MODES:
            raise RegistrationError("BadMode", f"mode must be one of {MODES}")
        if mode == "proxy" and not endpoint:
            raise RegistrationError("BadMode", "proxy mode needs the worker's 'endpoint'")
        for reservation in self.reservations:
            if reservation_covers(reservation.match, address) and owner.uid not in reservation.uids:
                raise RegistrationError(
                    "AddressReserved",
                    f"{address} is reserved for uids {sorted(reservation.uids)}; uid {owner.uid} may not register it",
                )
        group = self.groups.get(address)
        if group is not None:
            if group.uid != owner.uid:
                raise RegistrationError(
                    "ConflictingRegistration",
                    f"{address} is already registered by uid {group.uid}",
                )
            if group.mode != mode:
                raise RegistrationError(
                    "ConflictingRegistration",
                    f"{address} is already registered in {group.mode} mode; a group has one mode",
                )
            if any(m.owner is owner for m in group.members):
                raise RegistrationError("AlreadyRegistered", f"{address} is already registered by this connection")
        member = Member(owner, endpoint)
        if mode == "proxy" and self._make_proxy is not None:
            member.target = self._make_proxy(endpoint or "")
            start = getattr(member.target, "start", None)
            if start is not None:
                start()
        if group is None:
            group = Group(address, mode, owner.uid)
            group.target = self._make_target(group) if self._make_target else None
            self.groups[address] = group
            group.members.append(member)
            self._republish()
        else:
            group.members.append(member)
        return group

    def unregister(self, owner: Owner, address: Address) -> bool:
        """Remove ``owner`` from ``address``'s group; True if it was a member."""
        group = self.groups.get(address)
        if group is None:
            return False
        kept = [m for m in group.members if m.owner is not owner]
        if len(kept) == len(group.members):
            return False
        self._drop([m for m in group.members if m.owner is owner])
        group.members = kept
        if not kept:
            del self.groups[address]
            self._republish()
        return True

    def unregister_all(self, owner: Owner) -> list[Address]:
        """Drop every registration of ``owner`` at once (its connection is gone)."""
        gone: list[Address] = []
        changed = False
        for address, group in list(self.groups.items()):
            mine = [m for m in group.members if m.owner is owner]
            if not mine:
                continue
            self._drop(mine)
            gone.append(address)
            group.members = [m for m in group.members if m.owner is not owner]
            if not group.members:
                del self.groups[address]
                changed = True
        if changed:
            self._republish()
        return gone

    def routes(self) -> list[Route]:
        """One route per group, most specific first."""
        ordered = sorted(self.groups.values(), key=lambda g: g.address.order())
        return [Route(g.name, g.address.match(), g.target) for g in ordered]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready listing of the groups and their members."""
        return [
            {
                "name": g.name,
                "address": g.address.to_json(),
                "mode": g.mode,
                "uid": g.uid,
                "members": [
                    {"pid": m.owner.pid, "uid": m.owner.uid, "endpoint": m.endpoint}
                    for m in g.members
                ],
            }
            for g in sorted(self.groups.values(), key=lambda g: g.address.order())
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
