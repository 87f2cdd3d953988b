# -*- test-case-name: tests.core.test_mux,tests.protocols.test_proxyheader -*-
"""PROXY protocol v1/v2 headers: a writer, and a parser adapter over Twisted's.

The writer follows the byte layout of HAProxy's public PROXY protocol
specification.  The parser wraps ``twisted.protocols.haproxy``'s parsers (through
``portmux._twisted``, which holds the private names) so callers can parse a buffer they already hold and get a
tri-state answer (header, NO, NEED_MORE) instead of exceptions.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from portmux import _twisted
from portmux.core.preamble import NEED_MORE, NO, Verdict

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107  # the longest legal v1 line, CRLF included
V2_MAX_LENGTH = 16 + 0xFFFF

_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_TCP4, _TCP6, _UNIX_STREAM, _UNSPEC = 0x11, 0x21, 0x31, 0x00


def _ip(address: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a Twisted address (IPv6 scope id dropped), or None for non-IP ones."""
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    try:
        return ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return None


def _same_family(
    source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Both addresses in one family: IPv4 mapped into IPv6 when they differ."""
    if source.version == destination.version:
        return source, destination
    return tuple(
        ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a
        for a in (source, destination)
    )


def v1_header(source: object, destination: object) -> bytes:
    """A PROXY v1 text line for a stream from ``source`` to ``destination``.

    Non-IP peers (UNIX sockets) get ``PROXY UNKNOWN``, as the spec says.
    """
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _same_family(src, dst)
    family = "TCP4" if src.version == 4 else "TCP6"
    sport: int = getattr(source, "port", 0)
    dport: int = getattr(destination, "port", 0)
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v2_header(source: object, destination: object) -> bytes:
    """A binary PROXY v2 header for a stream from ``source`` to ``destination``.

    IP and UNIX stream peers are described; anything else is sent as LOCAL.
    """
    src, dst = _ip(source), _ip(destination)
    if src is not None and dst is not None:
        src, dst = _same_family(src, dst)
        sport: int = getattr(source, "port", 0)
        dport: int = getattr(destination, "port", 0)
        body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
        family = _TCP4 if src.version == 4 else _TCP6
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body
    if isinstance(source, UNIXAddress) and isinstance(destination, UNIXAddress):
        body = _unix_path(source) + _unix_path(destination)
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, _UNIX_STREAM, len(body)) + body
    return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, _UNSPEC, 0)


def _unix_path(address: UNIXAddress) -> bytes:
    name = address.name or b""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    return name[:108].ljust(108, b"\x00")


def header(version: str, source: object, destination: object) -> bytes:
    """The header of ``version`` ("v1" or "v2")."""
    if version == "v1":
        return v1_header(source, destination)
    if version == "v2":
        return v2_header(source, destination)
    raise ValueError(f"unknown PROXY protocol version {version!r}; use 'v1' or 'v2'")


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header: its version, addresses (None for LOCAL/UNKNOWN), length."""

    version: int
    source: object
    destination: object
    length: int


ParseResult = ProxyHeader | Verdict


_V1_SIGNATURES = (b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN")
FIRST_BYTES = (b"P", b"\r")
"""The first byte of every PROXY header: a cheap test before ``signature``."""


def signature(data: bytes) -> Verdict | bool:
    """Whether ``data`` starts with a PROXY v1 or v2 signature: True, NO, or NEED_MORE.

    Only the fixed opening is checked (``PROXY TCP4 ``, ``PROXY TCP6 ``,
    ``PROXY UNKNOWN``, v2's 12 bytes), so an HTTP method named PROXY is not one.
    """
    undecided = False
    for opening in (V2_SIGNATURE[:12], *_V1_SIGNATURES):
        if data.startswith(opening):
            return True
        if opening.startswith(data):
            undecided = True
    return NEED_MORE if undecided else NO


def parse_header(data: bytes) -> ParseResult:
    """Parse a PROXY v1 or v2 header at the start of ``data``.

    Returns a ProxyHeader (``length`` bytes belong to it), NEED_MORE while
    ``data`` is a prefix of a header, or NO when it is not a valid header.
    """
    if data.startswith(V2_SIGNATURE[: len(data)]) and data[:1] == b"\r":
        return _parse_v2(data)
    if data.startswith(V1_PREFIX[: len(data)]) and data[:1] == b"P":
        return _parse_v1(data)
    return NO if data else NEED_MORE


def _parse_v1(data: bytes) -> ParseResult:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        return NEED_MORE if len(data) < V1_MAX_LENGTH else NO
    line = data[:end]
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        return ProxyHeader(1, None, None, end + 2)  # Twisted rejects the bare form
    parsed = _twisted.parse_proxy_v1(line)
    if parsed is None:
        return NO
    return ProxyHeader(1, _canonical(parsed[0]), _canonical(parsed[1]), end + 2)


def _parse_v2(data: bytes) -> ParseResult:
    if len(data) < 16:  # V2Parser.feed raises on short input instead of waiting
        return NEED_MORE
    length = 16 + struct.unpack("!H", data[14:16])[0]
    if len(data) < length:
        return NEED_MORE
    parsed = _twisted.parse_proxy_v2(data[:length])
    if parsed is None:
        return NO
    return ProxyHeader(2, _canonical(parsed[0]), _canonical(parsed[1]), length)


def _canonical(address: object) -> object:
    """IPv6 hosts in their compressed text form (Twisted's v2 parser writes every group)."""
    if isinstance(address, IPv6Address):
        try:
            host = str(ipaddress.IPv6Address(address.host))
        except ValueError:
            return address
        return IPv6Address(address.type, host, address.port)
    return address
