"""Protocol-appropriate refusal bytes: what a client sees when portmux says no."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

from twisted.web.http import RESPONSES

from portmux.preamble import Preamble

# HTTP-style status codes are the common vocabulary; each protocol maps them.
NOT_FOUND = 404
BAD_REQUEST = 400
TIMEOUT = 408
TOO_LARGE = 431
BAD_GATEWAY = 502
UNAVAILABLE = 503

Refuser = Callable[[Preamble, int, str], bytes]


def http_refusal(preamble: Preamble, status: int, reason: str) -> bytes:
    """A short, complete HTTP/1.1 response that closes the connection."""
    if preamble.http_version == "HTTP/2":  # h2 negotiated by ALPN inside TLS
        return h2c_refusal(preamble, status, reason)
    phrase = RESPONSES.get(status, b"Error")
    body = f"{status} {phrase.decode('latin-1')}: {reason}\n".encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase.decode('latin-1')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + body


def h2c_refusal(preamble: Preamble, status: int, reason: str) -> bytes:
    """An empty server SETTINGS frame then GOAWAY carrying the reason as debug data."""
    debug = reason.encode("utf-8", "replace")[:200]
    settings = struct.pack("!I", 0)[1:] + bytes([4, 0]) + struct.pack("!I", 0)
    error_code = 0xB if status == UNAVAILABLE else 0x1  # ENHANCE_YOUR_CALM / PROTOCOL_ERROR
    payload = struct.pack("!II", 0, error_code) + debug
    goaway = struct.pack("!I", len(payload))[1:] + bytes([7, 0]) + struct.pack("!I", 0)
    return settings + goaway + payload


def tcpmux_refusal(preamble: Preamble, status: int, reason: str) -> bytes:
    """RFC 1078's negative answer: '-' then a reason, CRLF."""
    text = reason.replace("\r", " ").replace("\n", " ")
    return f"-{text}\r\n".encode("utf-8", "replace")


def tls_refusal(preamble: Preamble, status: int, reason: str) -> bytes:
    """A fatal TLS alert: unrecognized_name for an unknown SNI, else handshake_failure."""
    description = 112 if (status == NOT_FOUND and preamble.sni) else 40
    return bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description])


def nmf_refusal(preamble: Preamble, status: int, reason: str) -> bytes:
    """A .NET Message Framing Fault record (EndpointNotFound, UnsupportedVersion, ...)."""
    from portmux.nmf import fault_record, refusal_fault

    return fault_record(refusal_fault(preamble, status))


def no_refusal(preamble: Preamble, status: int, reason: str) -> bytes:
    """Protocols without an in-band error: a clean close says it."""
    return b""


REFUSERS: Mapping[str, Refuser] = {
    "http": http_refusal,
    "h2c": h2c_refusal,
    "tcpmux": tcpmux_refusal,
    "tls": tls_refusal,
    "nmf": nmf_refusal,
}


def refusal_bytes(preamble: Preamble, status: int, reason: str) -> bytes:
    """The bytes to send before closing, for ``preamble``'s protocol."""
    return REFUSERS.get(preamble.protocol, no_refusal)(preamble, status, reason)
