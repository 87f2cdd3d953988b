# -*- test-case-name: tests.protocols.test_registry,tests.test_layers -*-
"""The extension points: probes recognise protocols, targets take connections."""

from __future__ import annotations

from typing import Any, cast

from zope.interface import Attribute, Interface


class IProbe(Interface):
    """Recognises one protocol from a connection's first bytes, without I/O."""

    name = Attribute("Lower-case protocol name routes match on, e.g. 'tls'.")

    def probe(data: bytes) -> object:
        """Return a Preamble (match), NO, or NEED_MORE for the bytes so far.

        Called again with the whole, grown buffer after every read.
        """


class ITarget(Interface):
    """Takes a classified connection together with the bytes already read."""

    description = Attribute("One-line human description, for logs and status.")

    def attach(connection: object) -> object:
        """Take over ``connection`` (a portmux.core.mux.Classified).

        Return the IProtocol that receives the connection's further events
        (dataReceived, connectionLost, and readConnectionLost if it provides
        IHalfCloseableProtocol).
        """

    def start() -> None:
        """Called once when the listener starts (e.g. factory.doStart)."""

    def stop() -> object:
        """Called once when the listener stops; may return a Deferred."""


def as_target(target: object) -> object:
    """``target`` as an ITarget: itself, or adapted (e.g. an IResource or IProtocolFactory).

    The adapters are registered by ``portmux.targets``; an object that merely has an
    ``attach`` method is taken as it is.
    """
    if ITarget.providedBy(target):
        return target
    adapted = cast(Any, ITarget)(target, None)  # zope adaptation, None if no adapter
    if adapted is not None:
        return adapted
    if callable(getattr(target, "attach", None)):
        return target
    raise TypeError(
        f"{target!r} is not a target: pass an ITarget, an IResource or an IProtocolFactory"
    )
