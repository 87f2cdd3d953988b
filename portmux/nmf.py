""".NET Message Framing ([MC-NMF]) helpers: record sizes, Via routing, Fault records.

Via routing follows the Net.TCP Port Sharing Service and HTTP.SYS: a route's base
address ``net.tcp://HOST[:PORT]/path/`` has a strong wildcard host (``+``), an
exact host, or a weak wildcard host (``*``); strong beats exact beats weak, and
within a class the longest path prefix wins, whatever the route order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from portmux import refusal
from portmux.preamble import Preamble

__all__ = [
    "FAULTS",
    "FAULT_NAMESPACE",
    "BaseAddress",
    "ViaIndex",
    "decode_size",
    "encode_size",
    "fault_record",
    "parse_base_address",
    "parse_via",
    "refusal_fault",
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
DEFAULT_PORTS = {"net.tcp": 808}
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
        if not self.path:
            return True
        path = via.path
        return path == self.path or path.startswith(self.path + "/")

    def accepts(self, via: str | None) -> bool:
        """True when the Via text falls under this base address (False if missing or bad)."""
        if via is None:
            return False
        try:
            return self.matches(parse_via(via))
        except ValueError:
            return False


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

    def lookup(self, via: str) -> Iterator[T]:
        """Items whose base address takes ``via``: strong, exact, weak; longest prefix first."""
        try:
            parsed = parse_via(via)
        except ValueError:
            return
        prefixes = [parsed.path.rstrip("/")]
        while prefixes[-1]:
            prefixes.append(prefixes[-1].rpartition("/")[0])
        table = self._table
        for rank in (0, 1, 2):
            for prefix in prefixes:
                for base, item in table.get((rank, prefix), ()):
                    if base.matches(parsed):
                        yield item


def via_matches(base_address: str, via: str | None) -> bool:
    """True when ``via`` falls under ``base_address`` (False for a missing or bad Via)."""
    return parse_base_address(base_address).accepts(via)
