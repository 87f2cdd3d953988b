# -*- test-case-name: tests.protocols.test_h2c,tests.protocols.test_matrix,tests.protocols.test_registry -*-
"""HTTP/2 prior-knowledge probe: the 24-byte connection preface (RFC 9113 §3.4)."""

from __future__ import annotations

import struct

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["PREFACE", "PROBE", "probe_h2c"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def probe_h2c(data: bytes) -> ProbeResult:
    """Match as soon as the whole preface is here; the frames after it are not awaited."""
    if data.startswith(PREFACE):
        return Preamble(protocol="h2c", http_version="HTTP/2")
    return NEED_MORE if PREFACE.startswith(data) else NO


PROBE = FunctionProbe("h2c", probe_h2c)


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """An empty server SETTINGS frame then GOAWAY carrying the reason as debug data."""
    debug = reason.encode("utf-8", "replace")[:200]
    settings = struct.pack("!I", 0)[1:] + bytes([4, 0]) + struct.pack("!I", 0)
    error_code = 0xB if status == refusal.UNAVAILABLE else 0x1  # ENHANCE_YOUR_CALM / PROTOCOL_ERROR
    payload = struct.pack("!II", 0, error_code) + debug
    goaway = struct.pack("!I", len(payload))[1:] + bytes([7, 0]) + struct.pack("!I", 0)
    return settings + goaway + payload
