# -*- test-case-name: tests.daemon.test_config -*-
"""The built-in target kinds: resource, factory, status, help, echo (and proxy, tls from their modules).

Target modules are imported by the builders, only when a route uses the kind.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.interfaces import IProtocolFactory
from twisted.plugin import getPlugins
from twisted.web.resource import IResource

from portmux.daemon.config._checks import DottedName, dotted_name
from portmux.daemon.config._context import BuildContext
from portmux.daemon.config._kinds import ITargetKind, TargetKind
from portmux.daemon.config._problems import one_line
from portmux.daemon.config._proxy import PROXY_VALUE, build_proxy
from portmux.daemon.config._schema import Exactly, Text
from portmux.daemon.config._tls import TLS_VALUE, build_tls

__all__ = ["builtin_target_kinds", "target_kinds"]

_DOTTED = Text('a dotted name like "pkg.mod:attr"', check=dotted_name)
_TRUE = Exactly("true", (bool,), None, True)


def _instance_of(name: DottedName, check: Callable[[object], bool], ctx: BuildContext) -> object | None:
    """The named object if it passes ``check``, else what calling it returns if that passes."""
    obj = name.obj
    if check(obj):
        return obj
    if callable(obj):
        try:
            made: object = obj()
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            ctx.problem(ctx.target_key, f"calling {name.text} failed: {one_line(e)}")
            return None
        if check(made):
            return made
    return None


def build_resource(name: DottedName, ctx: BuildContext) -> object | None:
    """``resource = "pkg.mod:attr"``: an IResource, or a callable returning one."""
    from portmux.targets.resource import ResourceTarget

    resource = _instance_of(name, IResource.providedBy, ctx)
    if resource is None:
        if ctx.ok():
            ctx.problem(ctx.target_key, f"{name.text} is not an IResource nor a callable returning one")
        return None
    return ResourceTarget(resource)  # type: ignore[arg-type]


def build_factory(name: DottedName, ctx: BuildContext) -> object | None:
    """``factory = "pkg.mod:attr"``: an IProtocolFactory, or a callable returning one."""
    from portmux.targets.factory import FactoryTarget

    factory = _instance_of(name, IProtocolFactory.providedBy, ctx)
    if factory is None:
        if ctx.ok():
            ctx.problem(
                ctx.target_key, f"{name.text} is not an IProtocolFactory nor a callable returning one"
            )
        return None
    return FactoryTarget(factory)  # type: ignore[arg-type]


def build_status(value: bool, ctx: BuildContext) -> object:
    """``status = true``: the status page of the multiplexer it is routed on."""
    from portmux.daemon.admin import status_target

    return status_target()


def build_help(value: bool, ctx: BuildContext) -> object:
    """``help = true``: the TCPMUX HELP listing."""
    from portmux.targets.help import HelpTarget

    return HelpTarget()


def build_echo(value: bool, ctx: BuildContext) -> object:
    """``echo = true``: an in-process echo service."""
    from portmux.targets.echo import EchoFactory
    from portmux.targets.factory import FactoryTarget

    factory: Any = EchoFactory()
    return FactoryTarget(factory)


def builtin_target_kinds() -> dict[str, TargetKind]:
    """The kinds every installation has, in the order error hints list them."""
    kinds = (
        TargetKind("proxy", PROXY_VALUE, build_proxy, "HTTP per request (per_request), anything else byte-for-byte to backends"),
        TargetKind("resource", _DOTTED, build_resource, "an in-process twisted.web resource", True),
        TargetKind("factory", _DOTTED, build_factory, "any in-process IProtocolFactory"),
        TargetKind("tls", TLS_VALUE, build_tls, "terminate TLS, then route the plaintext again"),
        TargetKind("status", _TRUE, build_status, "the built-in status page", True),
        TargetKind("help", _TRUE, build_help, "TCPMUX HELP"),
        TargetKind("echo", _TRUE, build_echo, "an in-process echo service"),
    )
    return {kind.name: kind for kind in kinds}


def target_kinds() -> Mapping[str, TargetKind]:
    """Built-in kinds, then drop-in plugin kinds (the first of a name wins); a fresh mapping."""
    import portmux.plugins

    found: dict[str, TargetKind] = dict(builtin_target_kinds())
    with warnings.catch_warnings():  # twisted.plugin's path-cache chatter
        warnings.simplefilter("ignore")
        plugins = cast("list[TargetKind]", list(getPlugins(ITargetKind, portmux.plugins)))
    for kind in plugins:
        found.setdefault(kind.name, kind)
    return found
