"""TCPMUX probe: a service-name line (RFC 1078), "HELP" included."""

from __future__ import annotations

from portmux.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.probes.base import FunctionProbe

__all__ = ["MAX_NAME", "NAME_CHARACTERS", "PROBE", "probe_tcpmux"]

MAX_NAME = 64
NAME_CHARACTERS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+/:@"
)
"""Bytes allowed in a service name; anything else (a space, binary) is NO."""


def probe_tcpmux(data: bytes) -> ProbeResult:
    """Match "NAME\\r\\n" (or "NAME\\n"); ``consumed`` covers the line ending."""
    for index, byte in enumerate(data):
        if byte in NAME_CHARACTERS:
            if index >= MAX_NAME:
                return NO
            continue
        if index == 0:
            return NO
        if byte == 0x0A:
            end = index + 1
        elif byte == 0x0D:
            following = data[index + 1 : index + 2]
            if not following:
                return NEED_MORE
            if following != b"\n":
                return NO
            end = index + 2
        else:
            return NO
        service = data[:index].decode("ascii").lower()
        return Preamble(protocol="tcpmux", service=service, consumed=end)
    return NEED_MORE


PROBE = FunctionProbe("tcpmux", probe_tcpmux)
