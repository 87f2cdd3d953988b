# -*- test-case-name: tests.protocols.test_matrix,tests.protocols.test_nmf,tests.protocols.test_nmf_routing -*-
""".NET Message Framing ([MC-NMF], net.tcp): every rule of the protocol lives here.

The probe (the preamble and its Via URI), record sizes, Fault records (the
refusal), and Via routing. Via routing follows the Net.TCP Port Sharing Service
and HTTP.SYS: a route's base address ``net.tcp://HOST[:PORT]/path/`` has a strong
wildcard host (``+``), an exact host, or a weak wildcard host (``*``); strong beats
exact beats weak, and within a class the longest path prefix wins, whatever the
route order.

The probe matches as soon as the Via record is complete (Version, Mode, Via are
always the first three records). It does not wait for PreambleEnd: a client that
asks for a security upgrade (UpgradeRequest) waits for the server's answer before
sending PreambleEnd. ``consumed`` stays 0, so the target gets the whole preamble,
unchanged. Version 1.x with modes 1-4 is accepted; anything else matches with
``error`` set (UnsupportedVersion, UnsupportedMode, MalformedVia, ViaTooLong) so
the router refuses it with the matching framing Fault record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = [
    "FAULTS",
    "FAULT_NAMESPACE",
    "MAX_VIA",
    "MODES",
    "PROBE",
    "BaseAddress",
    "Record",
    "ViaIndex",
    "address_of",
    "decode_size",
    "encode_size",
    "fault_record",
    "lookup_via",
    "parse_base_address",
    "parse_via",
    "probe_nmf",
    "read_records",
    "refusal_fault",
    "refuse",
    "rewrite_via",
    "via_matches",
]

FAULT_NAMESPACE = "http://schemas.microsoft.com/ws/2006/05/framing/faults/"
"""[MC-NMF] 2.2.5: the namespace of the standard framing fault names."""

FAULTS = frozenset(
    {
        "ConnectionDispatchFailed",
        "ContentTypeInvalid",
        "ContentTypeTooLong",
        "EndpointAccessDenied",
        "EndpointNotFound",
        "EndpointPaused",
        "EndpointUnavailable",
        "MaxMessageSizeExceededFault",
        "ServerTooBusy",
        "ServiceActivationFailed",
        "UnsupportedMode",
        "UnsupportedVersion",
    }
)
"""The standard fault names of [MC-NMF] 2.2.5."""

FAULT_RECORD = 0x08
DEFAULT_PORTS = {"net.tcp": 808, "http": 80, "https": 443}
"""Ports of URIs that name none; the Via index also serves HTTP URL prefixes (HTTP.SYS style)."""
_RANKS = {"+": 0, "*": 2}  # any other host is exact: rank 1

T = TypeVar("T")


# -- record sizes (2.2.2) ----------------------------------------------------


def encode_size(size: int) -> bytes:
    """Encode a record size: 7 bits per octet, least significant first, high bit = more."""
    if not 0 <= size <= 0xFFFFFFFF:
        raise ValueError(f"record size {size} is outside 0..0xFFFFFFFF")
    out = bytearray()
    while size > 0x7F:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


def decode_size(data: bytes, offset: int) -> tuple[int, int] | None:
    """Decode a record size at ``offset``: (size, offset after it), or None if incomplete.

    Raises ValueError for more than five octets or a value above 0xFFFFFFFF.
    """
    size = 0
    for index in range(5):
        position = offset + index
        if position >= len(data):
            return None
        byte = data[position]
        if index == 4 and byte > 0x0F:
            raise ValueError("record size does not fit in five octets")
        size |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return size, position + 1
    raise ValueError("record size does not fit in five octets")  # pragma: no cover


# -- faults (2.2.5) ----------------------------------------------------------


def fault_record(fault: str) -> bytes:
    """A Fault record: 0x08, the size, then the UTF-8 fault URI.

    A bare standard name (``EndpointNotFound``) gets the framing fault namespace.
    """
    uri = FAULT_NAMESPACE + fault if fault in FAULTS else fault
    body = uri.encode("utf-8")
    if not body:
        raise ValueError("a fault must not be empty")
    return bytes([FAULT_RECORD]) + encode_size(len(body)) + body


def refusal_fault(preamble: Preamble, status: int) -> str:
    """The fault name answering a refused net.tcp connection.

    A probe-detected problem (``preamble.error``) wins: UnsupportedVersion and
    UnsupportedMode as themselves, any malformed Via as EndpointNotFound.
    """
    error = preamble.error
    if error is not None:
        return error if error in FAULTS else "EndpointNotFound"
    if status == refusal.UNAVAILABLE:
        return "EndpointUnavailable"
    if status == refusal.BAD_GATEWAY:
        return "ServiceActivationFailed"
    if status == refusal.TIMEOUT:
        return "ServerTooBusy"
    return "EndpointNotFound"


# -- Via and base addresses --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Via:
    """A parsed Via URI: scheme, lower-cased host, port (or None), path."""

    scheme: str
    host: str
    port: int | None
    path: str


@dataclass(frozen=True, slots=True)
class BaseAddress:
    """A registered base address; ``rank`` 0 strong (+), 1 exact host, 2 weak (*)."""

    scheme: str
    host: str
    port: int | None
    path: str  # lower-cased, no trailing slash; "" is the root
    rank: int

    def matches(self, via: Via) -> bool:
        """True when ``via`` is under this base address (scheme, host, port, path prefix)."""
        if via.scheme != self.scheme:
            return False
        if self.rank == 1 and via.host != self.host:
            return False
        if self.port is not None and via.port != self.port:
            return False
        return _path_under(self.path, via.path)

    def covers(self, other: BaseAddress) -> bool:
        """True when ``other`` lies under this base address (reservations): an exact
        host must be the same host, a port the same port, the path a prefix."""
        if other.scheme != self.scheme:
            return False
        if self.rank == 1 and (other.rank != 1 or other.host != self.host):
            return False
        if self.port is not None and other.port != self.port:
            return False
        return _path_under(self.path, other.path)

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.path}/"

    def accepts(self, via: str | None) -> bool:
        """True when the Via text falls under this base address (False if missing or bad)."""
        if via is None:
            return False
        try:
            return self.matches(parse_via(via))
        except ValueError:
            return False


def _path_under(prefix: str, path: str) -> bool:
    """Path prefix on segment boundaries; ``prefix`` has no trailing slash, "" is the root."""
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _split(uri: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host or not parts.netloc:
        raise ValueError(f"{uri!r} is not an absolute URI like net.tcp://host/path/")
    port = parts.port if parts.port is not None else DEFAULT_PORTS.get(scheme)
    return scheme, host.lower().rstrip("."), port, parts.path.lower()


def parse_via(uri: str) -> Via:
    """Parse a client's Via URI; raises ValueError when it is not an absolute URI."""
    scheme, host, port, path = _split(uri)
    return Via(scheme, host, port, path)


def parse_base_address(uri: str) -> BaseAddress:
    """Parse ``net.tcp://HOST[:PORT]/path/`` where HOST may be ``+`` or ``*``."""
    parts = urlsplit(uri.strip())
    explicit_port = parts.port  # ValueError on a bad port
    scheme, host, _, path = _split(uri)
    rank = _RANKS.get(host, 1)
    return BaseAddress(scheme, host, explicit_port, path.rstrip("/"), rank)


class ViaIndex(Generic[T]):
    """Immutable Via lookup over (base address, item) pairs in route order.

    Any scheme: net.tcp Via URIs, and the ``http://+:PORT/path/`` URL prefixes
    workers register for per-request HTTP (a request's URL is its "Via", see
    ``portmux.protocols.http.request_via``).

    Keyed by (rank, path), so a lookup costs a few dict probes per Via path segment.
    """

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        table: dict[tuple[int, str], list[tuple[BaseAddress, T]]] = {}
        for uri, item in entries:
            base = parse_base_address(uri)
            table.setdefault((base.rank, base.path), []).append((base, item))
        self._table = {key: tuple(value) for key, value in table.items()}

    def __bool__(self) -> bool:
        return bool(self._table)

    def bucket(self, rank: int, prefix: str) -> tuple[tuple[BaseAddress, T], ...]:
        """The (base address, item) pairs filed under ``rank`` and path ``prefix``, in route order."""
        return self._table.get((rank, prefix), ())

    def lookup(self, via: str) -> Iterator[T]:
        """Items whose base address takes ``via``: strong, exact, weak; longest prefix first."""
        return lookup_via(via, (self.bucket,))


def lookup_via(via: str, buckets: Sequence[Callable[[int, str], Iterable[tuple[BaseAddress, T]]]]) -> Iterator[T]:
    """Items whose base address takes ``via`` over several tables (earlier tables win ties):
    strong, exact, weak; longest path prefix first."""
    try:
        parsed = parse_via(via)
    except ValueError:
        return
    prefixes = [parsed.path.rstrip("/")]
    while prefixes[-1]:
        prefixes.append(prefixes[-1].rpartition("/")[0])
    for rank in (0, 1, 2):
        for prefix in prefixes:
            for bucket in buckets:
                for base, item in bucket(rank, prefix):
                    if base.matches(parsed):
                        yield item


def via_matches(base_address: str, via: str | None) -> bool:
    """True when ``via`` falls under ``base_address`` (False for a missing or bad Via)."""
    return parse_base_address(base_address).accepts(via)


# -- probe ------------------------------------------------------------

VERSION_RECORD = 0x00
MODE_RECORD = 0x01
VIA_RECORD = 0x02
KNOWN_ENCODING_RECORD = 0x03
EXTENSIBLE_ENCODING_RECORD = 0x04
UPGRADE_REQUEST_RECORD = 0x09
PREAMBLE_END_RECORD = 0x0C

MAX_VIA = 2048
"""Longest Via accepted, in octets (WCF's default limit)."""

MODES = {1: "singleton-unsized", 2: "duplex", 3: "simplex", 4: "singleton-sized"}
"""[MC-NMF] 2.2.3.2 mode values."""

_FIXED = {VERSION_RECORD: 2, MODE_RECORD: 1, KNOWN_ENCODING_RECORD: 1}
_SIZED = {VIA_RECORD, EXTENSIBLE_ENCODING_RECORD, UPGRADE_REQUEST_RECORD}


@dataclass(frozen=True, slots=True)
class Record:
    """One preamble record: its type and its content bytes."""

    type: int
    value: bytes


def read_records(data: bytes) -> Iterator[Record]:
    """The complete preamble records at the start of ``data``, up to PreambleEnd.

    Stops quietly at an incomplete record; raises ValueError at a record type
    that cannot appear in a preamble or a bad record size.
    """
    offset = 0
    while offset < len(data):
        kind = data[offset]
        if kind in _FIXED:
            end = offset + 1 + _FIXED[kind]
            if end > len(data):
                return
            yield Record(kind, data[offset + 1 : end])
        elif kind in _SIZED:
            size = decode_size(data, offset + 1)
            if size is None:
                return
            length, start = size
            end = start + length
            if end > len(data):
                return
            yield Record(kind, data[start:end])
        elif kind == PREAMBLE_END_RECORD:
            yield Record(kind, b"")
            return
        else:
            raise ValueError(f"record type 0x{kind:02x} cannot appear in a preamble")
        offset = end


def probe_nmf(data: bytes) -> ProbeResult:
    """Match Version, Mode, Via records; NO unless bytes 0, 3 and 5 are their types."""
    for index, expected in ((0, VERSION_RECORD), (3, MODE_RECORD), (5, VIA_RECORD)):
        if len(data) <= index:
            return NEED_MORE
        if data[index] != expected:
            return NO
        if index == 0 and len(data) > 1 and data[1] == 0:
            return NO  # major version 0 is invalid: not a framing client
    major, minor, mode = data[1], data[2], data[4]
    version = f"{major}.{minor}"
    mode_name = MODES.get(mode)
    if major != 1:
        return Preamble(protocol="nmf", version=version, error="UnsupportedVersion")
    if mode_name is None:
        return Preamble(protocol="nmf", version=version, error="UnsupportedMode")
    bad = Preamble(protocol="nmf", version=version, mode=mode_name, error="MalformedVia")
    try:
        size = decode_size(data, 6)
    except ValueError:
        return bad
    if size is None:
        return NEED_MORE
    length, start = size
    if length > MAX_VIA:
        return Preamble(protocol="nmf", version=version, mode=mode_name, error="ViaTooLong")
    if length == 0:
        return bad
    if len(data) < start + length:
        return NEED_MORE
    try:
        via = data[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return bad
    return Preamble(protocol="nmf", via=via, version=version, mode=mode_name)


PROBE = FunctionProbe("nmf", probe_nmf)


def rewrite_via(data: bytes, address: str | None) -> bytes:
    """``data`` with its preamble's Via pointing at ``address`` (``net.tcp://HOST:PORT``).

    The scheme and authority are replaced, the path and query kept, and the Via
    record's size re-encoded, so a proxied WCF service that checks the Via against
    its own listening address accepts the connection. Anything that is not a
    complete, valid net.tcp preamble start (or ``address`` None) comes back unchanged.
    """
    if address is None:
        return data
    verdict = probe_nmf(data)
    if not isinstance(verdict, Preamble) or verdict.error is not None or verdict.via is None:
        return data
    length, start = decode_size(data, 6)  # type: ignore[misc]  # the probe read it already
    target = urlsplit(address)
    via = urlsplit(verdict.via)._replace(scheme=target.scheme or "net.tcp", netloc=target.netloc)
    body = via.geturl().encode("utf-8")
    if len(body) > MAX_VIA:
        return data
    return data[:5] + bytes([VIA_RECORD]) + encode_size(len(body)) + body + data[start + length :]


def address_of(peer: object) -> str | None:
    """``net.tcp://HOST:PORT`` for a connected backend's address (IPv6 in brackets).

    None for an address without host and port (a UNIX socket).
    """
    host = getattr(peer, "host", None)
    if not host or getattr(peer, "port", None) is None:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"net.tcp://{host}:{peer.port}"  # type: ignore[attr-defined]


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """A Fault record (EndpointNotFound, UnsupportedVersion, ...) answering a refusal."""
    return fault_record(refusal_fault(preamble, status))
