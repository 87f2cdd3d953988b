"""Tests for the HTTP/1.x request probe."""

from __future__ import annotations

import random

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.http import METHODS, PROBE, probe_http, split_host_port
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import fixture, fixture_names


def http(**fields: str | None) -> Preamble:
    """An http Preamble with HTTP/1.1 unless told otherwise."""
    fields.setdefault("http_version", "HTTP/1.1")
    return Preamble(protocol="http", **fields)  # type: ignore[arg-type]


EXPECTED = {
    "http/curl-get.bin": http(
        method="GET", target="/index.html?q=1", path="/index.html", host="www.example.com"
    ),
    "http/curl-post.bin": http(
        method="POST", target="/submit", path="/submit", host="127.0.0.1"
    ),
    "http/curl-http1.0.bin": http(
        method="GET", target="/old", path="/old", host="127.0.0.1", http_version="HTTP/1.0"
    ),
    "http/curl-proxy-absolute.bin": http(
        method="GET", target="http://a.example/x", path="/x", host="a.example"
    ),
    "http/curl-proxy-connect.bin": http(
        method="CONNECT", target="a.example:443", path=None, host="a.example"
    ),
}


def test_every_fixture_has_expectations() -> None:
    assert fixture_names("http") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    data = fixture(name)
    assert probe_http(data) == EXPECTED[name]
    end = data.index(b"\r\n\r\n") + 4
    assert assert_probe_prefixes(probe_http, data) == end
    assert_probe_verdict_for_every_split(probe_http, data)


@pytest.mark.parametrize(
    "data",
    [b"\x16", b"GET\t", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"SSH-2.0-x\r\n",
     b"SSH-2.0-OpenSSH_9.2p1 Debian", b"echo\r\n", b"HELP\r\n", b"OPTIONSS x",
     b"PROPFIND http://a/ HTTP/1.1", b"A" * 25, b"G(T / HTTP/1.1", b" GET / HTTP/1.1"],
)
def test_no_early(data: bytes) -> None:
    assert probe_http(data) is NO


@pytest.mark.parametrize(
    "data",
    [b"", b"G", b"GE", b"GET", b"GET ", b"GET /index", b"GET /index HTTP/1",
     b"GET / HTTP/1.1\r", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n",
     b"OPTIONS", b"PATCH /x HTTP/1.0\n", b"DELETE /x H"],
)
def test_need_more(data: bytes) -> None:
    assert probe_http(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.2",
        b"GET / FTP",
        b"GET /\r\n\r\n",  # HTTP/0.9 simple request
        b"GET  / HTTP/1.1\r\n\r\n",  # two spaces
        b"GET / HTTP/1.1 x\r\n\r\n",
        b"GET /a\x00b HTTP/1.1\r\n\r\n",
        b"GET /a\x7f",
        b"GET / HTTP/1.1\rX",
    ],
)
def test_bad_request_line_is_no(data: bytes) -> None:
    assert probe_http(data) is NO


def test_every_method() -> None:
    for method in METHODS:
        result = probe_http(method + b" /p HTTP/1.1\r\nHost: h\r\n\r\n")
        assert isinstance(result, Preamble) and result.method == method.decode()


def test_bare_lf_and_host_case() -> None:
    result = probe_http(b"GET /x?y=1 HTTP/1.1\nHost: A.Example\n\n")
    assert result == http(method="GET", target="/x?y=1", path="/x", host="a.example")


def test_host_port_and_ipv6() -> None:
    result = probe_http(b"GET / HTTP/1.1\r\nhOsT:  [::1]:8080 \r\n\r\n")
    assert isinstance(result, Preamble) and result.host == "::1"
    result = probe_http(b"GET / HTTP/1.1\r\nHost: Web.Example:81\r\n\r\n")
    assert isinstance(result, Preamble) and result.host == "web.example"


def test_http10_without_host() -> None:
    result = probe_http(b"GET /a HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert result == http(method="GET", target="/a", path="/a", http_version="HTTP/1.0")


def test_absolute_form() -> None:
    result = probe_http(b"GET http://A.example:81/x?q#f HTTP/1.1\r\n\r\n")
    assert result == http(
        method="GET", target="http://A.example:81/x?q#f", path="/x", host="a.example"
    )
    result = probe_http(b"GET https://user@b.example HTTP/1.1\r\n\r\n")
    assert isinstance(result, Preamble) and (result.host, result.path) == ("b.example", "/")


def test_absolute_form_wins_over_host_header() -> None:
    """RFC 9112 §3.2.2: the target's authority overrides Host."""
    result = probe_http(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n")
    assert isinstance(result, Preamble) and result.host == "a.example"


def test_connect_authority_form() -> None:
    result = probe_http(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n")
    assert result == http(method="CONNECT", target="[::1]:443", host="::1")


def test_asterisk_form() -> None:
    result = probe_http(b"OPTIONS * HTTP/1.1\r\nHost: h.example\r\n\r\n")
    assert result == http(method="OPTIONS", target="*", path="*", host="h.example")


def test_conflicting_host_headers_give_no_host() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"
    result = probe_http(data)
    assert isinstance(result, Preamble) and result.host is None
    same = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: A.example\r\n\r\n"
    result = probe_http(same)
    assert isinstance(result, Preamble) and result.host == "a.example"


def test_body_after_headers_does_not_matter() -> None:
    head = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
    assert probe_http(head) == probe_http(head + b"\x16\x03\x01hi")


def test_empty_host_header() -> None:
    result = probe_http(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
    assert isinstance(result, Preamble) and result.host is None


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("a.example", ("a.example", None)),
        ("A.Example:8080", ("a.example", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("[::1", (None, None)),
        ("u:p@h.example:1", ("h.example", 1)),
        ("h.example:99999", ("h.example", None)),
        ("", (None, None)),
        (":80", (None, 80)),
    ],
)
def test_split_host_port(authority: str, expected: tuple[str | None, int | None]) -> None:
    assert split_host_port(authority) == expected


def test_probe_object() -> None:
    assert PROBE.name == "http"
    assert PROBE.probe(b"GET / HTTP/1.0\r\n\r\n") == http(
        method="GET", target="/", path="/", http_version="HTTP/1.0"
    )


@pytest.mark.parametrize(
    "method", [b"PROPFIND", b"QUERY", b"MKCOL", b"VERSION-CONTROL", b"M-SEARCH", b"get", b"X"]
)
def test_any_token_method_is_http(method: bytes) -> None:
    data = method + b" /dav/x?q=1 HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"
    result = probe_http(data)
    assert isinstance(result, Preamble)
    assert (result.method, result.path, result.host, result.error) == (
        method.decode(), "/dav/x", "a.example", None)
    assert_probe_verdict_for_every_split(probe_http, data)


@pytest.mark.parametrize(
    "host",
    ["a:\u00b2".encode("utf-8"), b"a:\xb2", b"a:\xd9\xa3", b"a b", b"a:99999999", b"\xff\xfe",
     b"[::1", b"a:1:2"],
)
def test_invalid_host_is_an_error_not_a_crash(host: bytes) -> None:
    result = probe_http(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert isinstance(result, Preamble)
    assert result.error == "invalid Host" and result.host is None


def test_split_host_port_takes_ascii_digits_only() -> None:
    assert split_host_port("a:\u00b2") == ("a:\u00b2", None)
    assert split_host_port("[::1]:\u0663") == ("::1", None)


def test_fuzz_non_ascii_in_every_field_never_raises() -> None:
    rng = random.Random(9110)
    fields = [b"GET", b"/p", b"HTTP/1.1", b"Host", b"a.example:80", b"X-Other", b"v"]
    for _ in range(3000):
        parts = list(fields)
        index = rng.randrange(len(parts))
        junk = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 4)))
        cut = rng.randrange(len(parts[index]) + 1)
        parts[index] = parts[index][:cut] + junk + parts[index][cut:]
        data = b"%s %s %s\r\n%s: %s\r\n%s: %s\r\n\r\n" % tuple(parts)
        result = probe_http(data)
        assert result is NO or result is NEED_MORE or isinstance(result, Preamble)
