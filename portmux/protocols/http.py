# -*- test-case-name: tests.protocols.test_http,tests.protocols.test_http_fastpath,tests.protocols.test_matrix -*-
"""HTTP/1.x probe: request line (RFC 9112 §3) and the Host header.

Answers NO as soon as the first bytes cannot start a known method followed by
a space, so the other probes are never kept waiting by it. A complete request of
the common shape is answered by a short fast path; every other input goes to the
full parser, and the two give the same verdict for any input (tests/probes/
test_http_fastpath.py checks this differentially).
"""

from __future__ import annotations

import re
import sys

from twisted.web.http import RESPONSES

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols import h2c
from portmux.protocols.base import FunctionProbe

__all__ = ["METHODS", "PROBE", "probe_http", "split_host_port", "valid_host"]

METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)
"""The standard methods. Any other RFC 9110 token is an extension method (PROPFIND,
QUERY, ...) and is HTTP too when its target is origin-form (``/...``) or ``*``."""

_LONGEST_METHOD = 24
"""Longest method token accepted (registered methods are at most 17 characters)."""
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{0,5})?\Z"
)
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")
_CONTROL_OR_SPACE = re.compile(rb"[\x00-\x20\x7f]")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_HOST_VALUE = re.compile(rb"\n[ \t]*host[ \t]*:([^\n]*)", re.IGNORECASE)


def valid_host(authority: str) -> bool:
    """True when ``authority`` is RFC 9110's ``uri-host [ ":" port ]`` (ASCII digits only)."""
    return _HOST.match(authority.strip().rpartition("@")[2]) is not None


def split_host_port(authority: str) -> tuple[str | None, int | None]:
    """Split "host[:port]" (IPv6 as "[::1]:8080"); host lower-cased, None if empty.

    A port is ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses).
    """
    authority = authority.strip()
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    port: int | None = None
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket:
            return None, None
        if rest.startswith(":") and _ascii_digits(rest[1:]):
            port = int(rest[1:])
    else:
        host, colon, digits = authority.rpartition(":")
        if not colon:
            host = digits
        elif _ascii_digits(digits):
            port = int(digits)
        elif digits:
            host = authority
    host = host.lower()
    if port is not None and port > 65535:
        port = None
    return (host or None), port


def _ascii_digits(text: str) -> bool:
    """True for a non-empty run of ASCII 0-9."""
    return text.isascii() and text.isdigit()


def _method_verdict(data: bytes) -> ProbeResult | int:
    """The index of the space after the method token, or a verdict if not yet known.

    An extension method (not in METHODS) must be followed by an origin-form or ``*``
    target, so a banner such as ``SSH-2.0-x y`` is rejected at its first space.
    """
    space = data.find(b" ", 0, _LONGEST_METHOD + 1)
    if space < 0:
        if not data or (len(data) <= _LONGEST_METHOD and _TOKEN.match(data)):
            return NEED_MORE
        return NO
    if space == 0 or _TOKEN.match(data, 0, space) is None:
        return NO
    if data[:space] not in METHODS:
        first = data[space + 1 : space + 2]
        if not first:
            return NEED_MORE
        if first not in (b"/", b"*"):
            return NO
    return space


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


def _probe_http_full(data: bytes) -> ProbeResult:
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
    error = None
    if authority is not None and not valid_host(authority) and method != "CONNECT":
        error, authority = "invalid Host", None  # refused with 400, never routed
    elif any(not valid_host(h) for h in hosts):
        error = "invalid Host"
    # Conflicting Host headers are ambiguous: route on no host rather than guess.
    host = split_host_port(authority)[0] if authority is not None else None
    return Preamble(
        protocol="http",
        method=method,
        target=target,
        path=path,
        host=host,
        http_version=parts[2].decode("ascii"),
        error=error,
    )


# -- fast path ------------------------------------------------------------------
# One regex over the latin-1 text of a complete header block of the common shape,
# built so that a match means _probe_http_full sees the same request line, blank line
# and Host, and so that its groups are the strings that parser returns:
# - request line: a method other than CONNECT, an origin-form target ("/...") and
#   HTTP/1.0 or 1.1; "path" ends where _parse_target cuts it (first "?" or "#");
# - header lines that start with none of "h", "H", a blank or CR (so are neither
#   blank nor Host fields as _HOST_VALUE finds them), and at most one Host line among
#   them whose value is a plain name or IPv4 address with an optional numeric port
#   (split_host_port only lower-cases the name of such a value);
# - the blank line.
# Everything else goes to _probe_http_full, and so do buffers with no blank line yet
# or over _COMMON_MAX_BYTES, where failing the regex would cost more than it saves.
# Possessive repeats ("*+", "++"; Python 3.11+) never give back characters, which
# nothing after them could match anyway: they change no match, and only stop a long
# bad line from being retried character by character.
_OTHER_LINE = r"[^hH \t\r\n][^\n]*+\n"
_HOST_LINE = r"[hH][oO][sS][tT][ \t]*:[ \t]*(?P<host>[A-Za-z0-9.-]++)(?::[0-9]{1,5})?[ \t]*\r?\n"
_COMMON_PATTERN = (
    r"(?!CONNECT )(?P<method>[!#$%&'*+.^_`|~0-9A-Za-z-]{1," + str(_LONGEST_METHOD) + "})"
    r" (?P<target>(?P<path>/[^?#\x00-\x20\x7f]*+)(?:[?#][^\x00-\x20\x7f]*+)?)"
    r" (?P<version>HTTP/1\.[01])\r?\n"
    rf"(?:{_OTHER_LINE})*+"
    # "(host line, other lines)? blank line", spelt as a branch: sre runs it faster.
    rf"(?:{_HOST_LINE}(?:{_OTHER_LINE})*+\r?\n|\r?\n)"
)
if sys.version_info < (3, 11):  # pragma: no cover
    _COMMON_PATTERN = _COMMON_PATTERN.replace("*+", "*").replace("++", "+")
_COMMON_REQUEST = re.compile(_COMMON_PATTERN)
_COMMON_MAX_BYTES = 4096

# Preamble(protocol="http") cut around its five HTTP fields. The fast path joins the
# pieces and makes the tuple directly (what Preamble.__new__ does in the end), at a
# third of the cost of a keyword call to Preamble; the check keeps the cut honest.
_HTTP_FIELDS = ("method", "target", "path", "host", "http_version")
_HTTP_START = Preamble._fields.index(_HTTP_FIELDS[0])
_HTTP_END = _HTTP_START + len(_HTTP_FIELDS)
if Preamble._fields[_HTTP_START:_HTTP_END] != _HTTP_FIELDS:  # pragma: no cover
    raise ImportError(f"Preamble fields {_HTTP_FIELDS} are no longer consecutive")
_SHARED_WORDS = {word: word for word in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "HTTP/1.0", "HTTP/1.1",
)}
"""One string object per common method and version, shared by every Preamble (a connection
held open keeps its Preamble: ~100 bytes fewer each)."""
_BEFORE_HTTP = Preamble(protocol="http")[:_HTTP_START]
_AFTER_HTTP = Preamble(protocol="http")[_HTTP_END:]


def _probe_http_common(data: bytes) -> Preamble | None:
    """The Preamble of a complete request in the common shape, or None for anything else.

    One regex match instead of the general parse, for the per-connection hot path.
    """
    # bytes.find rather than "in", which first tries the needle as an int (slower).
    if len(data) > _COMMON_MAX_BYTES or (data.find(b"\n\r\n") < 0 and data.find(b"\n\n") < 0):
        return None
    match = _COMMON_REQUEST.match(data.decode("latin-1"))
    if match is None:
        return None
    method, target, path, version, host = match.groups()  # the named groups, in order
    if path == target:
        path = target  # one string for both when there is no query
    shared = _SHARED_WORDS.get
    fields = (shared(method, method), target, path, None if host is None else host.lower(),
              shared(version, version))
    return tuple.__new__(Preamble, _BEFORE_HTTP + fields + _AFTER_HTTP)


def probe_http(data: bytes) -> ProbeResult:
    """Match an HTTP/1.0 or HTTP/1.1 request once its header block is complete.

    Tries the common-shape fast path first; the full parser answers everything else.
    """
    common = _probe_http_common(data)
    return common if common is not None else _probe_http_full(data)


PROBE = FunctionProbe("http", probe_http)


REASON_PHRASES = {
    400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 421: "Misdirected Request", 422: "Unprocessable Content",
    426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    511: "Network Authentication Required",
}
"""Reason phrases of RFC 9110 section 15 (and RFC 6585's 428, 429, 431, 511) where
twisted.web.http.RESPONSES lacks them or still has an older spelling."""


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status``; a class name for a code nobody named."""
    phrase = REASON_PHRASES.get(status)
    if phrase is None:
        known = RESPONSES.get(status)
        if known is not None:
            return known.decode("latin-1")
        return "Server Error" if status >= 500 else "Client Error"
    return phrase


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """A short, complete HTTP/1.1 response that closes the connection."""
    if preamble.http_version == "HTTP/2":  # h2 negotiated by ALPN inside TLS
        return h2c.refuse(preamble, status, reason)
    phrase = reason_phrase(status)
    body = f"{status} {phrase}: {reason}\n".encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + body


def request_via(preamble: Preamble, local_port: int | None) -> str | None:
    """A request's URL as the Via index reads it: ``http[s]://host:port/path``.

    The port is the one the connection arrived on (HTTP.SYS matches prefixes on
    it); the host comes from the request's Host. None without a path.
    """
    if preamble.path is None:
        return None
    scheme = "https" if preamble.tls_terminated else "http"
    host = preamble.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{local_port}" if local_port else ""
    return f"{scheme}://{host}{port}{preamble.path}"
