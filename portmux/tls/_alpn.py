# -*- test-case-name: tests.tls.test_alpn,tests.targets.test_tls_alpn -*-
"""ALPN selection for terminated TLS: the server's preference, no overlap is not an error.

Twisted's own selection callback answers an empty protocol when nothing overlaps,
which OpenSSL turns into a fatal ``internal_error`` (80) alert for every client
offering ALPN.  ``install`` replaces it on a context: no overlap carries on without
ALPN (as nginx does), or, with ``refuse``, ends the handshake with RFC 7301's
``no_application_protocol`` (120) alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL
from zope.interface import Interface

__all__ = ["ALPN_MISMATCH_POLICIES", "IALPNOffer", "NoCommonProtocol", "install", "select"]

ALPN_MISMATCH_POLICIES = ("continue", "refuse")


class IALPNOffer(Interface):
    """What a TLS connection's wrapped factory offers when no ``alpn`` is configured."""

    def alpn_offer(server_name: str | None) -> object:
        """ALPN ids (bytes), most preferred first, for a hello naming ``server_name``; () for none."""


class NoCommonProtocol(SSL.Error):
    """The client's ALPN list and ours do not overlap and the policy is to refuse.

    Raised inside OpenSSL's callback (which makes OpenSSL send alert 120); pyOpenSSL
    re-raises it from the handshake, where Twisted treats it as a handshake failure.
    """


def select(ours: Sequence[bytes], theirs: Sequence[bytes]) -> bytes | None:
    """Our most preferred id the client also offered, or None."""
    offered = set(theirs)
    for protocol in ours:
        if protocol in offered:
            return protocol
    return None


def _offer_of(connection: Any) -> Sequence[bytes]:
    """The automatic offer of the factory behind ``connection``'s TLS protocol, if any."""
    tls_protocol = connection.get_app_data()
    factory = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    if factory is None or not IALPNOffer.providedBy(factory):
        return ()
    raw_name = connection.get_servername()
    name = raw_name.decode("ascii", "replace").lower() if raw_name else None
    offer: Any = factory.alpn_offer(name)
    return tuple(offer)


def install(context: Any, configured: Sequence[str] | None, mismatch: str = "continue") -> None:
    """Set ``context``'s ALPN selection: ``configured`` ids, or the factory's offer when None."""
    fixed = None if configured is None else tuple(p.encode("ascii") for p in configured)
    refuse = mismatch == "refuse"

    def choose(connection: Any, theirs: list[bytes]) -> Any:
        ours = fixed if fixed is not None else _offer_of(connection)
        chosen = select(ours, theirs)
        if chosen is not None:
            return chosen
        if refuse and ours:
            wanted = b", ".join(ours).decode("ascii", "replace")
            given = b", ".join(theirs).decode("ascii", "replace")
            reason = f"no ALPN protocol in common (ours: {wanted}; client's: {given})"
            # OpenSSL's error shape (a list of (library, function, reason)), which
            # Twisted's handshake-failure handling unpacks.
            raise NoCommonProtocol([("portmux", "alpn", reason)])
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(choose)
