# -*- test-case-name: tests.protocols.test_dns,tests.protocols.test_matrix -*-
"""DNS over TCP probe: a two-byte length, then a query (RFC 1035 §4.2.2, §4.1).

The header must be a query (QR=0, no AA/TC/Z bits, RCODE 0) of the QUERY, NOTIFY
or UPDATE opcode with the counts such a message has; the whole message must be
here and its first question well formed.
"""

from __future__ import annotations

import struct

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_QUERY", "PROBE", "probe_dns"]

MAX_QUERY = 512
"""Longest query accepted (padded EDNS queries stay well below it)."""

_HEADER = 12
_MIN_QUERY = _HEADER + 1 + 4  # the root name, QTYPE, QCLASS
_FORBIDDEN_FLAGS = 0x8000 | 0x0400 | 0x0200 | 0x0040 | 0x000F  # QR AA TC Z RCODE
_CLASSES = frozenset((1, 3, 4, 254, 255))  # IN CH HS NONE ANY
_MAX_COUNT = {0: (1, 0, 0, 2), 4: (1, 1, 0, 2), 5: (1, 64, 64, 4)}
"""Opcode (QUERY, NOTIFY, UPDATE) → largest QD, AN, NS and AR counts; QD must be 1."""


def probe_dns(data: bytes) -> ProbeResult:
    """Match once the whole length-prefixed query is here."""
    if len(data) >= 2:
        length = struct.unpack_from("!H", data)[0]
        if not _MIN_QUERY <= length <= MAX_QUERY:
            return NO
    elif data[:1] > bytes([MAX_QUERY >> 8]):
        return NO
    if len(data) >= 6:
        flags = struct.unpack_from("!H", data, 4)[0]
        if flags & _FORBIDDEN_FLAGS:
            return NO
        limits = _MAX_COUNT.get((flags >> 11) & 0xF)
        if limits is None:
            return NO
        counts = data[6:14]
        for index in range(len(counts) // 2):
            count = struct.unpack_from("!H", counts, index * 2)[0]
            if count > limits[index] or (index == 0 and count != 1):
                return NO
    if len(data) < 2 + _HEADER or len(data) < 2 + length:
        return NEED_MORE
    message = data[2 : 2 + length]
    end = _question_end(message)
    if end is None:
        return NO
    additional = struct.unpack_from("!H", message, 10)[0]
    if additional and length < end + 11:
        return NO  # promised records (EDNS OPT is 11 bytes) are missing
    return Preamble(protocol="dns")


def _question_end(message: bytes) -> int | None:
    """Offset after the first question, or None if its name or type is malformed."""
    position, total = _HEADER, 0
    while True:
        if position >= len(message):
            return None
        size = message[position]
        if size == 0:
            position += 1
            break
        if size > 63:
            return None  # no compression pointer can precede the first name
        total += size + 1
        if total > 255:
            return None
        position += 1 + size
    if position + 4 > len(message):
        return None
    qtype, qclass = struct.unpack_from("!HH", message, position)
    if qtype == 0 or qclass not in _CLASSES:
        return None
    return position + 4


PROBE = FunctionProbe("dns", probe_dns)
