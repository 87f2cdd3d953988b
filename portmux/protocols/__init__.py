# -*- test-case-name: tests.protocols.test_http_fastpath,tests.protocols.test_matrix,tests.protocols.test_nmf,tests.protocols.test_nmf_routing,tests.protocols.test_registry -*-
"""One module per protocol, each owning all of that protocol's rules, and their tables.

A protocol module has a ``PROBE`` (a pure function of the first bytes) and, when the
protocol has an in-band "no", a ``refuse(preamble, status, reason)``. This package
lists the probes (``all_probes``, drop-in plugins included) and picks a refusal by
protocol name (``refusal_bytes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from portmux.core.interfaces import IProbe
from portmux.core.preamble import Preamble
from portmux.core.refusal import Refuser
from portmux.protocols import (
    dns,
    h2c,
    http,
    mqtt,
    nmf,
    openvpn,
    postgres,
    rdp,
    redis,
    socks,
    ssh,
    tcpmux,
    tls,
    xmpp,
)
from portmux.protocols.base import FunctionProbe

__all__ = [
    "BUILTIN_ORDER",
    "REFUSERS",
    "FunctionProbe",
    "PluginProbe",
    "all_probes",
    "builtin_probes",
    "refusal_bytes",
]


@implementer(IPlugin, IProbe)
class PluginProbe(FunctionProbe):
    """A FunctionProbe that twisted.plugin can discover in a portmux.plugins module."""


BUILTIN_ORDER = (
    "tls", "h2c", "http", "ssh", "tcpmux", "nmf",
    "postgres", "redis", "mqtt", "xmpp", "socks", "rdp", "dns", "openvpn",
)
"""Probe names in the default order. The first six keep their verdicts: the later
probes say NO to what they match. dns precedes openvpn (both start with a length)."""


def builtin_probes() -> tuple[IProbe, ...]:
    """The built-in probes in the default order (see BUILTIN_ORDER)."""
    probes = (
        tls.PROBE, h2c.PROBE, http.PROBE, ssh.PROBE, tcpmux.PROBE, nmf.PROBE,
        postgres.PROBE, redis.PROBE, mqtt.PROBE, xmpp.PROBE, socks.PROBE, rdp.PROBE,
        dns.PROBE, openvpn.PROBE,
    )
    return cast("tuple[IProbe, ...]", probes)


def all_probes() -> tuple[IProbe, ...]:
    """Built-in probes, then drop-in plugin probes; the first probe of a name wins."""
    import portmux.plugins

    found: dict[str, IProbe] = {}
    for probe in (*builtin_probes(), *getPlugins(IProbe, portmux.plugins)):
        found.setdefault(probe.name, probe)
    return tuple(found.values())


REFUSERS: Mapping[str, Refuser] = {
    "http": http.refuse,
    "h2c": h2c.refuse,
    "tcpmux": tcpmux.refuse,
    "tls": tls.refuse,
    "nmf": nmf.refuse,
    "postgres": postgres.refuse,
    "mqtt": mqtt.refuse,
    "xmpp": xmpp.refuse,
    "socks": socks.refuse,
}
"""Protocols with an in-band refusal; any other protocol is refused by a clean close."""


def refusal_bytes(preamble: Preamble, status: int, reason: str) -> bytes:
    """The bytes to send before closing, in ``preamble``'s protocol (b"" for none)."""
    refuser = REFUSERS.get(preamble.protocol)
    return b"" if refuser is None else refuser(preamble, status, reason)
