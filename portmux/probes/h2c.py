"""HTTP/2 prior-knowledge probe: the 24-byte connection preface (RFC 9113 §3.4)."""

from __future__ import annotations

from portmux.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.probes.base import FunctionProbe

__all__ = ["PREFACE", "PROBE", "probe_h2c"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def probe_h2c(data: bytes) -> ProbeResult:
    """Match as soon as the whole preface is here; the frames after it are not awaited."""
    if data.startswith(PREFACE):
        return Preamble(protocol="h2c", http_version="HTTP/2")
    return NEED_MORE if PREFACE.startswith(data) else NO


PROBE = FunctionProbe("h2c", probe_h2c)
