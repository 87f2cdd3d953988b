# -*- test-case-name: tests.protocols.test_matrix,tests.protocols.test_tls -*-
"""TLS probe: parse the record layer and the ClientHello for SNI, ALPN and versions.

Byte layouts follow RFC 8446 §4.1.2 / RFC 5246 §7.4.1.2 (ClientHello),
RFC 6066 §3 (server_name), RFC 7301 §3.1 (ALPN) and RFC 8446 §4.2.1
(supported_versions). A ClientHello may span several TCP reads and several
handshake records; the probe answers NEED_MORE until the whole message is here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult, Verdict
from portmux.protocols.base import FunctionProbe

__all__ = [
    "PROBE",
    "ClientHello",
    "is_grease",
    "parse_client_hello",
    "probe_tls",
    "version_name",
]

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
MAX_RECORD_PAYLOAD = 2**14
MAX_CLIENT_HELLO = 65536
MAX_EXTENSIONS = 256
"""More extensions than any real client sends (~20): such a hello is NO, not parsed on."""

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

_VERSION_NAMES = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class _Malformed(Exception):
    """Internal: the bytes cannot be a valid ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The parts of a ClientHello that routing and TLS termination care about."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[tuple[int, bytes], ...]
    sni: str | None
    alpn: tuple[str, ...]
    supported_versions: tuple[int, ...]
    record_bytes: int
    """How many leading bytes of the buffer hold the records carrying the hello."""

    @property
    def tls_versions(self) -> tuple[str, ...]:
        """Offered versions by name: supported_versions, then legacy_version."""
        names: list[str] = []
        for number in (*self.supported_versions, self.legacy_version):
            name = version_name(number)
            if not is_grease(number) and name not in names:
                names.append(name)
        return tuple(names)


def is_grease(value: int) -> bool:
    """True for RFC 8701 GREASE code points (0x0A0A, 0x1A1A, ... 0xFAFA)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def version_name(number: int) -> str:
    """OpenSSL-style name of a protocol version ("TLSv1.3"), or hex if unknown."""
    return _VERSION_NAMES.get(number, f"0x{number:04x}")


def _clean_hostname(raw: bytes) -> str | None:
    """Lower-cased, trailing-dot-stripped ASCII hostname, or None if invalid."""
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return None
    if all(_LABEL.match(label) for label in name.split(".")):
        return name
    return None


class _Reader:
    """Bounds-checked big-endian reader over one bytes object."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _Malformed()
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def vector(self, width: int, minimum: int = 0) -> _Reader:
        """A sub-reader over a length-prefixed vector; advances past it."""
        length = self.uint(width)
        if length < minimum:
            raise _Malformed()
        start = self.pos
        self.take(length)
        return _Reader(self.data, start, start + length)


def _server_name(body: bytes) -> str | None:
    reader = _Reader(body)
    names = reader.vector(2, 1)
    if reader.remaining():
        raise _Malformed()
    found: str | None = None
    seen_host = False
    while names.remaining():
        name_type = names.uint(1)
        value = names.vector(2, 1)
        raw = value.take(value.remaining())
        if name_type == 0 and not seen_host:
            seen_host = True
            found = _clean_hostname(raw)
    return found


def _alpn(body: bytes) -> tuple[str, ...]:
    reader = _Reader(body)
    protocols = reader.vector(2, 2)
    if reader.remaining():
        raise _Malformed()
    result: list[str] = []
    while protocols.remaining():
        name = protocols.vector(1, 1)
        result.append(name.take(name.remaining()).decode("latin-1"))
    return tuple(result)


def _supported_versions(body: bytes) -> tuple[int, ...]:
    reader = _Reader(body)
    versions = reader.vector(1, 2)
    if reader.remaining() or versions.remaining() % 2:
        raise _Malformed()
    result: list[int] = []
    while versions.remaining():
        number = versions.uint(2)
        if not is_grease(number):
            result.append(number)
    return tuple(result)


def _parse_body(body: bytes, record_bytes: int) -> ClientHello:
    """Parse a complete ClientHello body (after the 4-byte handshake header)."""
    reader = _Reader(body)
    legacy_version = reader.uint(2)
    if legacy_version >> 8 != 3:
        raise _Malformed()
    random = reader.take(32)
    session = reader.vector(1)
    if session.remaining() > 32:
        raise _Malformed()
    session_id = session.take(session.remaining())
    suites = reader.vector(2, 2)
    if suites.remaining() % 2:
        raise _Malformed()
    raw_suites = suites.take(suites.remaining())
    cipher_suites = struct.unpack(f">{len(raw_suites) // 2}H", raw_suites)
    compression = reader.vector(1, 1)
    compression_methods = compression.take(compression.remaining())
    extensions: list[tuple[int, bytes]] = []
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if reader.remaining():
        block = reader.vector(2)
        if reader.remaining():
            raise _Malformed()
        seen: set[int] = set()
        # Inline rather than through _Reader: ~20 extensions per hello, 7 calls each.
        data, pos, end = block.data, block.pos, block.end
        while pos < end:
            if pos + 4 > end:
                raise _Malformed()
            ext_type = data[pos] << 8 | data[pos + 1]
            start = pos + 4
            pos = start + (data[pos + 2] << 8 | data[pos + 3])
            if pos > end or ext_type in seen or len(seen) >= MAX_EXTENSIONS:
                raise _Malformed()
            ext_data = data[start:pos]
            seen.add(ext_type)
            extensions.append((ext_type, ext_data))
            if ext_type == EXT_SERVER_NAME:
                # A server_name extension may legally be empty only in a ServerHello.
                sni = _server_name(ext_data)
            elif ext_type == EXT_ALPN:
                alpn = _alpn(ext_data)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(ext_data)
    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        compression_methods=compression_methods,
        extensions=tuple(extensions),
        sni=sni,
        alpn=alpn,
        supported_versions=versions,
        record_bytes=record_bytes,
    )


def _scan(data: bytes) -> ClientHello | Verdict:
    """Reassemble handshake records and parse the ClientHello, or give a verdict."""
    if not data:
        return NEED_MORE
    if data[0] != CONTENT_HANDSHAKE:
        return NO
    payload = bytearray()
    pos = 0
    needed: int | None = None  # full handshake message size, once known
    while True:
        header = data[pos : pos + 5]
        if header[:1] and header[0] != CONTENT_HANDSHAKE:
            return NO
        if len(header) >= 2 and header[1] != 3:
            return NO
        if len(header) >= 3 and header[2] > 4:
            return NO
        if len(header) < 5:
            return NEED_MORE
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_RECORD_PAYLOAD:
            return NO
        start = pos + 5
        chunk = data[start : start + length]
        payload += chunk
        if payload and payload[0] != HANDSHAKE_CLIENT_HELLO:
            return NO
        if needed is None and len(payload) >= 4:
            declared = int.from_bytes(payload[1:4], "big")
            if declared > MAX_CLIENT_HELLO:
                return NO
            needed = 4 + declared
        if needed is not None and len(payload) >= needed:
            body = bytes(payload[4:needed])
            try:
                return _parse_body(body, min(start + length, len(data)))
            except _Malformed:
                return NO
        if len(chunk) < length:
            return NEED_MORE
        pos = start + length


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data`` (record layer included).

    Return None if the data is incomplete or not a well-formed ClientHello.
    """
    result = _scan(data)
    return result if isinstance(result, ClientHello) else None


def probe_tls(data: bytes) -> ProbeResult:
    """Match a TLS ClientHello; NO on anything that is not a handshake record."""
    result = _scan(data)
    if isinstance(result, Verdict):
        return result
    return Preamble(
        protocol="tls",
        sni=result.sni,
        alpn=result.alpn,
        tls_versions=result.tls_versions,
    )


PROBE = FunctionProbe("tls", probe_tls)


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """A fatal TLS alert: unrecognized_name for an unknown SNI, else handshake_failure."""
    description = 112 if (status == refusal.NOT_FOUND and preamble.sni) else 40
    return bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description])
