# -*- test-case-name: tests.protocols.test_rdp,tests.protocols.test_matrix -*-
"""RDP probe: a TPKT (RFC 1006) carrying an X.224 Connection Request ([MS-RDPBCGR] 2.2.1.1).

After the fixed X.224 fields come an optional ``Cookie: mstshash=NAME\\r\\n`` (or a
routing token line), an optional RDP_NEG_REQ and an optional correlation info;
routes match the mstshash name as ``cookie``.
"""

from __future__ import annotations

import struct

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_REQUEST", "PROBE", "probe_rdp"]

MAX_REQUEST = 5 + 254
"""Longest Connection Request, TPKT header included: X.224's length indicator is at most 254."""

_FIXED = 11  # TPKT 4 + LI, CR-CDT, DST-REF 2, SRC-REF 2, CLASS
_COOKIE = b"Cookie: mstshash="
_NEG_REQUEST, _CORRELATION = 0x01, 0x06


def probe_rdp(data: bytes) -> ProbeResult:
    """Match once the whole Connection Request is here."""
    header = data[:6]
    expected = b"\x03\x00"
    if header[:2] != expected[: len(header)]:
        return NO
    if len(header) >= 4:
        length = struct.unpack_from("!H", header, 2)[0]
        if not _FIXED <= length <= MAX_REQUEST:
            return NO
        if len(header) >= 5 and header[4] != length - 5:
            return NO
        if len(header) >= 6 and header[5] != 0xE0:
            return NO  # Connection Request, credit 0
    if len(data) < 6:
        return NEED_MORE
    if data[6:8] != b"\0\0"[: len(data[6:8])] or (len(data) > 10 and data[10] != 0):
        return NO  # DST-REF 0, class 0
    if len(data) < length:
        return NEED_MORE
    return _variable(data[_FIXED:length])


def _variable(rest: bytes) -> ProbeResult:
    """Parse the optional cookie line and negotiation structures."""
    cookie = None
    if rest.startswith(b"Cookie: "):
        end = rest.find(b"\r\n")
        if end < 0:
            return NO
        line = rest[:end]
        if any(b < 0x20 or b > 0x7E for b in line):
            return NO
        if line.startswith(_COOKIE):
            cookie = line[len(_COOKIE) :].decode("ascii")
        rest = rest[end + 2 :]
    for kind, size in ((_NEG_REQUEST, 8), (_CORRELATION, 36)):
        if rest[:1] == bytes([kind]):
            if len(rest) < size or struct.unpack_from("<H", rest, 2)[0] != size:
                return NO
            rest = rest[size:]
    if rest:
        return NO
    return Preamble(protocol="rdp", cookie=cookie)


PROBE = FunctionProbe("rdp", probe_rdp)
