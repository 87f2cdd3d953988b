# -*- test-case-name: tests.protocols.test_socks,tests.protocols.test_matrix -*-
"""SOCKS probe: a SOCKS5 method selection (RFC 1928 §3) or a SOCKS4/4a request.

SOCKS4: VN=4, CD=1 (CONNECT) or 2 (BIND), DSTPORT, DSTIP, USERID NUL, and for 4a
(DSTIP 0.0.0.x, x > 0) a host name NUL. Routes match ``version`` ("5", "4", "4a").
Refusals: SOCKS5 "no acceptable methods" (0xFF), SOCKS4 "request rejected" (0x5B).
"""

from __future__ import annotations

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_FIELD", "PROBE", "probe_socks", "refuse"]

MAX_FIELD = 255
"""Longest SOCKS4 user id or SOCKS4a host name, NUL excluded."""

_METHODS = frozenset(range(0x0A)) | frozenset(range(0x80, 0xFF))
"""IANA-assigned methods (0x00-0x09) and the private range; 0xFF is never offered."""
_HOST_CHARACTERS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:[]"
)


def probe_socks(data: bytes) -> ProbeResult:
    """SOCKS5 once all offered methods are here; SOCKS4 once its NUL-ended fields are."""
    if not data:
        return NEED_MORE
    if data[0] == 5:
        return _socks5(data)
    if data[0] == 4:
        return _socks4(data)
    return NO


def _socks5(data: bytes) -> ProbeResult:
    if len(data) < 2:
        return NEED_MORE
    count = data[1]
    if count == 0:
        return NO
    methods = data[2 : 2 + count]
    if any(m not in _METHODS for m in methods) or len(set(methods)) < len(methods):
        return NO
    if len(methods) < count:
        return NEED_MORE
    return Preamble(protocol="socks", version="5")


def _socks4(data: bytes) -> ProbeResult:
    if len(data) >= 2 and data[1] not in (1, 2):
        return NO
    if len(data) >= 4 and data[2:4] == b"\0\0":
        return NO  # port 0
    if len(data) < 8:
        return NEED_MORE
    user_end = data.find(b"\0", 8, 8 + MAX_FIELD + 1)
    user = data[8 : user_end if user_end >= 0 else 8 + MAX_FIELD + 1]
    if any(b < 0x20 or b == 0x7F for b in user):
        return NO
    if user_end < 0:
        return NEED_MORE if len(user) <= MAX_FIELD else NO
    address = data[4:8]
    if not (address[:3] == b"\0\0\0" and address[3]):
        return NO if address[:3] == b"\0\0\0" else Preamble(protocol="socks", version="4")
    host_end = data.find(b"\0", user_end + 1, user_end + 2 + MAX_FIELD)
    host = data[user_end + 1 : host_end if host_end >= 0 else user_end + 2 + MAX_FIELD]
    if any(b not in _HOST_CHARACTERS for b in host):
        return NO
    if host_end < 0:
        return NEED_MORE if len(host) <= MAX_FIELD else NO
    if not host:
        return NO
    return Preamble(protocol="socks", version="4a")


PROBE = FunctionProbe("socks", probe_socks)


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """SOCKS5: method 0xFF (no acceptable methods); SOCKS4: reply 0x5B (rejected).

    With no version known (a greeting cut short by the preamble timeout), a close.
    """
    if preamble.version == "5":
        return b"\x05\xff"
    if preamble.version in ("4", "4a"):
        return b"\x00\x5b" + bytes(6)
    return b""
