# -*- test-case-name: tests.protocols.test_matrix,tests.protocols.test_ssh -*-
"""SSH probe: the client's protocol version exchange line (RFC 4253 §4.2)."""

from __future__ import annotations

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_BANNER", "PROBE", "probe_ssh"]

MAX_BANNER = 255
"""Longest identification line, CR LF included (RFC 4253 §4.2)."""

_PREFIXES = ((b"SSH-2.0-", "2.0"), (b"SSH-1.99-", "1.99"))


def probe_ssh(data: bytes) -> ProbeResult:
    """Match "SSH-2.0-..." or "SSH-1.99-..." once the line has ended."""
    for prefix, version in _PREFIXES:
        if not data.startswith(prefix):
            continue
        end = data.find(b"\n", 0, MAX_BANNER)
        if end < 0:
            if len(data) >= MAX_BANNER:
                return NO
            rest = data[len(prefix) :]
            return NEED_MORE if _printable(rest.removesuffix(b"\r")) else NO
        line = data[len(prefix) : end].removesuffix(b"\r")
        if not _printable(line):
            return NO
        software = line.split(b" ", 1)[0].decode("ascii")
        return Preamble(protocol="ssh", version=version, software=software)
    if any(prefix.startswith(data[: len(prefix)]) for prefix, _ in _PREFIXES):
        return NEED_MORE
    return NO


def _printable(text: bytes) -> bool:
    """US-ASCII printable characters and spaces only."""
    return all(0x20 <= b < 0x7F for b in text)


PROBE = FunctionProbe("ssh", probe_ssh)
