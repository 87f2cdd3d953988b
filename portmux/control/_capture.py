# -*- test-case-name: tests.control.test_capture -*-
"""Would a new registration take traffic that today reaches another uid's registration?

As HTTP.SYS's URL ACLs and the Net.TCP service's allowAccounts behave: a longer
prefix under another uid's path, a newer version of its service name, or a
stronger Via wildcard over its base address is a capture. The check is exact for
the Router's rules because it asks the Router: it builds a *witness* preamble both
matches accept (the most specific point of their overlap) and compares the route
``select`` picks for it without and with the new registration.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Router, host_pattern_covers, path_prefix_matches
from portmux.protocols import tcpmux as naming
from portmux.protocols.nmf import parse_base_address

WITNESS_HOST = "portmux-witness.invalid"
"""A name standing for "any host" in a witness (``.invalid`` never resolves)."""


class _Disjoint(Exception):
    """The two matches accept no preamble in common."""


def _instance(pattern: str) -> str:
    """One concrete name a host pattern takes."""
    if pattern == "*":
        return WITNESS_HOST
    if pattern.startswith("*."):
        return "portmux-witness" + pattern[1:]
    return pattern


def _name(mine: str | None, theirs: str | None) -> str | None:
    if mine is None or theirs is None:
        chosen = mine if theirs is None else theirs
        return None if chosen is None else _instance(chosen.lower())
    mine, theirs = mine.lower(), theirs.lower()
    if host_pattern_covers(theirs, mine):
        return _instance(mine)
    if host_pattern_covers(mine, theirs):
        return _instance(theirs)
    raise _Disjoint


def _path(mine: str | None, theirs: str | None) -> str | None:
    if mine is None or theirs is None:
        chosen = mine if theirs is None else theirs
        return None if chosen is None else (chosen.rstrip("/") or "/")
    longer, shorter = (mine, theirs) if len(mine.rstrip("/")) >= len(theirs.rstrip("/")) else (theirs, mine)
    witness = longer.rstrip("/") or "/"
    if not path_prefix_matches(shorter, witness):
        raise _Disjoint
    return witness


def _same(mine: str | None, theirs: str | None) -> str | None:
    if mine is not None and theirs is not None and mine.lower() != theirs.lower():
        raise _Disjoint
    return mine if mine is not None else theirs


def _services(mine: str | None, theirs: str | None) -> tuple[str | None, ...]:
    """Requested names in both spaces: the unversioned base (newest wins) and each versioned name."""
    if mine is None or theirs is None:
        chosen = mine if theirs is None else theirs
        return (None,) if chosen is None else (chosen,)
    a, b = naming.parse_pattern(mine), naming.parse_pattern(theirs)
    if a.namespace != b.namespace or (not a.is_pattern and not b.is_pattern and a.name != b.name):
        raise _Disjoint
    named = [name for name in (a, b) if not name.is_pattern]
    if not named:
        return (f"{a.namespace}:portmux-witness",)
    return tuple(dict.fromkeys([named[0].base, *(str(name) for name in named if name.version)]))


def _via(mine: str | None, theirs: str | None) -> str | None:
    if mine is None or theirs is None:
        chosen = mine if theirs is None else theirs
        if chosen is None:
            return None
        base = parse_base_address(chosen)
        host = base.host if base.rank == 1 else WITNESS_HOST
        port = "" if base.port is None else f":{base.port}"
        return f"{base.scheme}://{host}{port}{base.path}/"
    a, b = parse_base_address(mine), parse_base_address(theirs)
    if a.scheme != b.scheme:
        raise _Disjoint
    exact = {base.host for base in (a, b) if base.rank == 1}
    if len(exact) > 1:
        raise _Disjoint
    ports = {base.port for base in (a, b) if base.port is not None}
    if len(ports) > 1:
        raise _Disjoint
    longer, shorter = (a, b) if len(a.path) >= len(b.path) else (b, a)
    if shorter.path and not (longer.path == shorter.path or longer.path.startswith(shorter.path + "/")):
        raise _Disjoint
    host = exact.pop() if exact else WITNESS_HOST
    port = f":{ports.pop()}" if ports else ""
    return f"{a.scheme}://{host}{port}{longer.path}/"


def _peer(mine: Match, theirs: Match) -> str:
    networks = [n for n in mine.network + theirs.network]
    if not mine.network or not theirs.network:
        return str(networks[0].network_address) if networks else "127.0.0.1"
    for a in mine.network:
        for b in theirs.network:
            if a.overlaps(b):
                inner = a if a.prefixlen >= b.prefixlen else b
                return str(ipaddress.ip_network(inner).network_address)
    raise _Disjoint


def witnesses(mine: Match, theirs: Match) -> list[tuple[Preamble, str]]:
    """Preambles (and a peer IP) that both matches accept; empty when they cannot overlap."""
    try:
        protocol = _same(mine.protocol, theirs.protocol)
        alpn = _same(mine.alpn, theirs.alpn)
        base = Preamble(
            protocol=(protocol or "http").lower(),
            host=_name(mine.host, theirs.host),
            sni=_name(mine.sni, theirs.sni),
            path=_path(mine.path, theirs.path),
            via=_via(mine.via, theirs.via),
            alpn=(alpn,) if alpn else (),
        )
        services = _services(mine.service, theirs.service)
        ip = _peer(mine, theirs)
    except (_Disjoint, ValueError):
        return []
    found = []
    for service in services:
        preamble = base.replace(service=service)
        if mine.accepts(preamble, ip) and theirs.accepts(preamble, ip):
            found.append((preamble, ip))
    return found


def captured(before: Router, after: Router, new: Any, victim: Any) -> bool:
    """True when some connection reaching ``victim`` through ``before`` reaches ``new`` through ``after``."""
    for preamble, ip in witnesses(new.match, victim.match):
        if before.select(preamble, ip) is victim and after.select(preamble, ip) is new:
            return True
    return False
