# -*- test-case-name: tests.daemon.test_config -*-
"""Target kinds: a route's target key → how its value is declared and how it is built.

The built-in kinds come first; drop-in ``PluginTargetKind`` objects in any
``portmux.plugins`` module (found with twisted.plugin) add more, so a new kind of
target needs no change to the config code.  A plugin cannot replace a built-in kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from portmux.daemon.config._schema import ValueType

__all__ = ["ITargetKind", "PluginTargetKind", "TargetKind"]


class ITargetKind(Interface):
    """A kind of route target that the config can build."""

    name = Attribute("The route key naming this kind, e.g. 'proxy'.")
    value = Attribute("A ValueType declaring the key's value (often a TableOf a declaration).")
    build = Attribute(
        "build(value, ctx) -> ITarget | None, given the checked value and a BuildContext; "
        "or a 'module:function' string naming it, imported when a route uses the kind."
    )
    per_request = Attribute(
        "True if the target dispatches each HTTP request on its own path; a built target may "
        "say otherwise with its own per_request attribute (proxy: per_request = false)."
    )
    doc = Attribute("One line for documentation and error hints.")


@implementer(ITargetKind)
@dataclass(frozen=True)
class TargetKind:
    """One kind of target: its key, its declared value, its builder."""

    name: str
    value: ValueType
    build: Callable[[Any, Any], object] | str
    doc: str = ""
    per_request: bool = False


@implementer(IPlugin, ITargetKind)
@dataclass(frozen=True)
class PluginTargetKind(TargetKind):
    """A TargetKind that twisted.plugin discovers in a ``portmux.plugins`` module."""
