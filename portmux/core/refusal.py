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
