# -*- test-case-name: tests.protocols.test_nmf_routing,tests.test_layers -*-
"""The status vocabulary of refusals, shared by every protocol.

HTTP-style status codes are the common words; each protocol module
(portmux.protocols.*) maps them to its own refusal bytes, and
``portmux.protocols.refusal_bytes`` picks the module by the preamble's protocol.
"""

from __future__ import annotations

from collections.abc import Callable

from portmux.core.preamble import Preamble

__all__ = [
    "BAD_GATEWAY",
    "BAD_REQUEST",
    "GATEWAY_TIMEOUT",
    "NOT_FOUND",
    "TIMEOUT",
    "TOO_LARGE",
    "UNAVAILABLE",
    "Refuser",
]

NOT_FOUND = 404
BAD_REQUEST = 400
TIMEOUT = 408
TOO_LARGE = 431
BAD_GATEWAY = 502
UNAVAILABLE = 503
GATEWAY_TIMEOUT = 504

Refuser = Callable[[Preamble, int, str], bytes]
"""(preamble, status, reason) -> the bytes to send before closing."""

# Protocol-neutral names of why a connection was refused: what the status page,
# status.json, the metrics' ``reason`` label and the access log say.
NO_ROUTE = "no_route"
UNKNOWN_SNI = "unknown_sni"
UNKNOWN_SERVICE = "unknown_service"
BAD_PREAMBLE = "bad_preamble"
BACKEND_UNREACHABLE = "backend_unreachable"
NO_BACKEND_UP = "no_backend_up"
UNAVAILABLE_SERVICE = "service_unavailable"
PREAMBLE_TIMEOUT = "preamble_timeout"
PREAMBLE_TOO_LARGE = "preamble_too_large"
SNIFF_EVICTED = "sniff_evicted"
"""Closed while still unclassified to make room under connection pressure (core/sniff_pressure.py)."""
PROXY_HEADER_MISSING = "proxy_header_missing"
PROXY_HEADER_UNTRUSTED = "proxy_header_untrusted"
PROXY_HEADER_TOO_LARGE = "proxy_header_too_large"
TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
INTERNAL_ERROR = "internal_error"

_BY_STATUS = {
    NOT_FOUND: NO_ROUTE,
    BAD_REQUEST: BAD_PREAMBLE,
    TIMEOUT: PREAMBLE_TIMEOUT,
    TOO_LARGE: PREAMBLE_TOO_LARGE,
    BAD_GATEWAY: BACKEND_UNREACHABLE,
    UNAVAILABLE: UNAVAILABLE_SERVICE,
}


def reason_name(status: int, preamble: Preamble | None = None) -> str:
    """The protocol-neutral name for a refusal given only its status (and what was sniffed)."""
    if status == NOT_FOUND and preamble is not None:
        if preamble.protocol == "tcpmux" and preamble.service:
            return UNKNOWN_SERVICE
        if preamble.protocol == "nmf" and preamble.via:
            return UNKNOWN_SERVICE
        if preamble.protocol == "tls" and preamble.sni and not preamble.tls_terminated:
            return UNKNOWN_SNI
    if status == BAD_REQUEST and preamble is not None and preamble.protocol == "tcpmux":
        return UNKNOWN_SERVICE
    return _BY_STATUS.get(status, f"status_{status}")
