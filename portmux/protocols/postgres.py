# -*- test-case-name: tests.protocols.test_postgres,tests.protocols.test_matrix -*-
"""PostgreSQL probe: SSLRequest, GSSENCRequest, CancelRequest or a v3 StartupMessage.

Every frontend opens with an Int32 length then an Int32 code (PostgreSQL protocol
docs, "Message Formats"); the refusal is an ErrorResponse, which a client prints.
"""

from __future__ import annotations

import struct

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_STARTUP", "PROBE", "probe_postgres", "refuse"]

MAX_STARTUP = 10000
"""Longest startup packet the server itself accepts (MAX_STARTUP_PACKET_LENGTH)."""

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
_REQUESTS = {SSL_REQUEST: ("ssl", 8), GSSENC_REQUEST: ("gssenc", 8), CANCEL_REQUEST: ("cancel", 16)}
_MAJOR = 3
_MAX_MINOR = 2  # 3.2 is PostgreSQL 18's protocol


def probe_postgres(data: bytes) -> ProbeResult:
    """Match a whole special request or StartupMessage; ``request`` says which."""
    have = len(data)
    if have < 8:
        # Lengths below 2**16 only: the first two bytes are zero.
        if data[:2] != bytes(min(have, 2)):
            return NO
        if have >= 4 and not 8 <= int.from_bytes(data[:4], "big") <= MAX_STARTUP:
            return NO
        return NEED_MORE
    length, code = struct.unpack_from("!II", data)
    if code in _REQUESTS:
        request, size = _REQUESTS[code]
        return Preamble(protocol="postgres", request=request) if length == size else NO
    major, minor = code >> 16, code & 0xFFFF
    if major != _MAJOR or minor > _MAX_MINOR or not 9 <= length <= MAX_STARTUP:
        return NO
    if have < length:
        # Reject early when what has arrived cannot be the start of key\0value\0 pairs.
        return NEED_MORE if _pairs(data[8:have], complete=False) is not None else NO
    pairs = _pairs(data[8:length], complete=True)
    if pairs is None:
        return NO
    user = pairs.get("user")
    if not user:
        return NO  # "user" is the one required parameter
    return Preamble(
        protocol="postgres", request="startup", version=f"{major}.{minor}",
        user=user, database=pairs.get("database") or user,
    )


def _pairs(body: bytes, complete: bool) -> dict[str, str] | None:
    """Parse ``name\\0value\\0...\\0``; None when malformed.

    An incomplete body is only checked for stray control characters.
    """
    if not complete:
        return {} if _text(body.replace(b"\0", b"")) else None
    fields = body.split(b"\0")
    # name, value, ..., then the terminating empty name and the empty remainder.
    if len(fields) < 2 or fields[-1] != b"" or fields[-2] != b"" or len(fields) % 2:
        return None
    out: dict[str, str] = {}
    for index in range(0, len(fields) - 2, 2):
        name, value = fields[index], fields[index + 1]
        if not name or not _text(name) or not _text(value):
            return None
        out[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def _text(value: bytes) -> bool:
    """No control characters (parameter names and values are C strings of text)."""
    return all(b >= 0x20 or b == 0x09 for b in value)


PROBE = FunctionProbe("postgres", probe_postgres)


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """An ErrorResponse (severity FATAL) that psql prints, whatever the request was."""
    code = {refusal.NOT_FOUND: "08004", refusal.TIMEOUT: "08006",
            refusal.UNAVAILABLE: "53300"}.get(status, "08P01")
    fields = b"".join(
        kind + value.encode("utf-8", "replace").replace(b"\0", b" ") + b"\0"
        for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", reason))
    ) + b"\0"
    # libpq reports an ErrorResponse sent in answer to an SSLRequest too.
    return b"E" + struct.pack("!I", 4 + len(fields)) + fields
