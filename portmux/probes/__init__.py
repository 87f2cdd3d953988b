"""Protocol probes: pure functions of a connection's first bytes, and their registry."""

from __future__ import annotations

from typing import cast

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from portmux.interfaces import IProbe
from portmux.probes import h2c, http, nmf, ssh, tcpmux, tls
from portmux.probes.base import FunctionProbe

__all__ = ["FunctionProbe", "PluginProbe", "all_probes", "builtin_probes"]


@implementer(IPlugin, IProbe)
class PluginProbe(FunctionProbe):
    """A FunctionProbe that twisted.plugin can discover in a portmux.plugins module."""


def builtin_probes() -> tuple[IProbe, ...]:
    """The built-in probes in the default order: tls, h2c, http, ssh, tcpmux, nmf."""
    probes = (tls.PROBE, h2c.PROBE, http.PROBE, ssh.PROBE, tcpmux.PROBE, nmf.PROBE)
    return cast("tuple[IProbe, ...]", probes)


def all_probes() -> tuple[IProbe, ...]:
    """Built-in probes, then drop-in plugin probes; the first probe of a name wins."""
    import portmux.plugins

    found: dict[str, IProbe] = {}
    for probe in (*builtin_probes(), *getPlugins(IProbe, portmux.plugins)):
        found.setdefault(probe.name, probe)
    return tuple(found.values())
