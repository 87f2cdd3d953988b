"""HTTP/1.x probe: request line (RFC 9112 §3) and the Host header.

Answers NO as soon as the first bytes cannot start a known method followed by
a space, so the other probes are never kept waiting by it.
"""

from __future__ import annotations

import re

from portmux.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.probes.base import FunctionProbe

__all__ = ["METHODS", "PROBE", "probe_http", "split_host_port"]

METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)
"""Request methods recognised; any other token is not taken for HTTP."""

_LONGEST_METHOD = max(len(m) for m in METHODS)
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")
_CONTROL_OR_SPACE = re.compile(rb"[\x00-\x20\x7f]")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_HOST_VALUE = re.compile(rb"\n[ \t]*host[ \t]*:([^\n]*)", re.IGNORECASE)


def split_host_port(authority: str) -> tuple[str | None, int | None]:
    """Split "host[:port]" (IPv6 as "[::1]:8080"); host lower-cased, None if empty."""
    authority = authority.strip()
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    port: int | None = None
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket:
            return None, None
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    else:
        host, colon, digits = authority.rpartition(":")
        if not colon:
            host = digits
        elif digits.isdigit():
            port = int(digits)
        elif digits:
            host = authority
    host = host.lower()
    if port is not None and port > 65535:
        port = None
    return (host or None), port


def _method_verdict(data: bytes) -> ProbeResult | int:
    """The index of the space after the method, or a verdict if not yet known."""
    space = data.find(b" ", 0, _LONGEST_METHOD + 1)
    if space < 0:
        if len(data) <= _LONGEST_METHOD and any(m.startswith(data) for m in METHODS):
            return NEED_MORE
        return NO
    return space if data[:space] in METHODS else NO


def _partial_line_plausible(rest: bytes) -> bool:
    """Can ``rest`` (request line after the method, no LF yet) still be valid?"""
    target, space, version = rest.partition(b" ")
    if _CONTROL_OR_SPACE.search(target) is not None:
        return False
    if not space:
        return True
    if len(version) <= 8:
        return any(v.startswith(version) for v in _VERSIONS)
    return version[:8] in _VERSIONS and version[8:] == b"\r"


def _parse_target(method: str, target: str) -> tuple[str | None, str | None]:
    """(authority, path) from a request target in any of the four forms."""
    if method == "CONNECT":
        return target, None
    if target == "*":
        return None, "*"
    scheme, sep, rest = target.partition("://")
    if sep and scheme and not scheme.startswith("/"):
        authority, slash, path = rest.partition("/")
        authority = authority.split("?", 1)[0].split("#", 1)[0]
        path = (slash + path) or "/"
        return authority, path.split("?", 1)[0].split("#", 1)[0] or "/"
    return None, target.split("?", 1)[0].split("#", 1)[0]


def probe_http(data: bytes) -> ProbeResult:
    """Match an HTTP/1.0 or HTTP/1.1 request once its header block is complete."""
    space = _method_verdict(data)
    if not isinstance(space, int):
        return space
    line_end = data.find(b"\n", space)
    if line_end < 0:
        return NEED_MORE if _partial_line_plausible(data[space + 1 :]) else NO
    line = data[:line_end].removesuffix(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[1] or parts[2] not in _VERSIONS:
        return NO
    if not _partial_line_plausible(parts[1]):
        return NO
    # The header block ends at the first empty line (CRLF or bare LF) after the request line.
    blank = _BLANK_LINE.search(data, line_end)
    if blank is None:
        return NEED_MORE
    host_header: str | None = None
    hosts: set[str] = set()
    for raw in _HOST_VALUE.findall(data, line_end, blank.start() + 1):
        text = raw.removesuffix(b"\r").strip().decode("latin-1")
        hosts.add(text.lower())
        host_header = text
    method = parts[0].decode("ascii")
    target = parts[1].decode("latin-1")
    authority, path = _parse_target(method, target)
    if authority is None and len(hosts) == 1:
        authority = host_header
    # Conflicting Host headers are ambiguous: route on no host rather than guess.
    host = split_host_port(authority)[0] if authority is not None else None
    return Preamble(
        protocol="http",
        method=method,
        target=target,
        path=path,
        host=host,
        http_version=parts[2].decode("ascii"),
    )


PROBE = FunctionProbe("http", probe_http)
