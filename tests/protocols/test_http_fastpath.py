"""The HTTP probe's fast path gives exactly the full parser's verdict, for any bytes."""

from __future__ import annotations

import random
import re
import sys

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols import http
from portmux.protocols.http import (
    _COMMON_MAX_BYTES,
    METHODS,
    _probe_http_common,
    _probe_http_full,
    probe_http,
)

from .helpers import all_fixture_names, fixture, mutations

BENCH = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
CURL = (
    b"GET /app/x?y=1 HTTP/1.1\r\nHost: www.example.com:8080\r\n"
    b"User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
)


def request(head: bytes, *headers: bytes, eol: bytes = b"\r\n") -> bytes:
    """A request line and header lines, each ended by ``eol``, then the blank line."""
    return b"".join(line + eol for line in (head, *headers)) + eol


# Shapes the fast path takes, and shapes it must leave to the full parser.
COMMON = [
    BENCH,
    CURL,
    *(request(m + b" /p HTTP/1.1", b"Host: h") for m in sorted(METHODS - {b"CONNECT"})),
    request(b"GET /a HTTP/1.0", b"Accept: */*"),  # HTTP/1.0 without Host
    request(b"GET /a HTTP/1.0"),
    request(b"GET /x?y=1 HTTP/1.1", b"Host: A.Example", eol=b"\n"),  # bare LF
    request(b"GET / HTTP/1.1", b"Host: Web.Example:81"),
    request(b"GET / HTTP/1.1", b"HOST:127.0.0.1:8080 "),
    request(b"GET / HTTP/1.1", b"hOsT\t: \tmixed.CASE-host\t"),
    request(b"GET /q?a=1#frag HTTP/1.1", b"Host: h"),
    request(b"GET /#x?y HTTP/1.1", b"Host: h"),
    request(b"GET /a?b?c#d#e HTTP/1.1", b"Host: h"),
    request(b"GET //h.example/p HTTP/1.1", b"Host: h"),
    request(b"GET /a://b HTTP/1.1", b"Host: h"),
    request(b"GET /caf\xe9/%7e HTTP/1.1", b"Host: h"),
    request(b"GET / HTTP/1.1", b"Host: h:99999"),
    request(b"GET / HTTP/1.1", b"X-Host: y", b"Host: h", b"Referer: http://localhost/"),
    request(b"GET / HTTP/1.1", b"Accept: */*", b"Host: h", b"X:"),
    b"GET / HTTP/1.1\r\nHost: h\n\r\n",  # mixed line ends
    b"GET / HTTP/1.1\nHost: h\r\n\n",
    request(b"POST /u HTTP/1.1", b"Host: h", b"Content-Length: 5") + b"\x16\x03\x01hi",
    request(b"POST /u HTTP/1.1", b"Host: h") + b"Host: not-a-header\r\n\r\n",
]
UNUSUAL = [
    request(b"GET http://A.example:81/x?q#f HTTP/1.1"),  # absolute-form
    request(b"GET https://user@b.example HTTP/1.1"),
    request(b"GET http://a.example/x HTTP/1.1", b"Host: b.example"),
    request(b"GET HTTP://a.example HTTP/1.1", b"Host: b"),
    request(b"CONNECT a.example:443 HTTP/1.1", b"Host: a.example:443"),
    request(b"CONNECT [::1]:443 HTTP/1.1"),
    request(b"CONNECT /x HTTP/1.1", b"Host: h"),
    request(b"OPTIONS * HTTP/1.1", b"Host: h.example"),
    request(b"GET / HTTP/1.1", b"Host:  [::1]:8080 "),  # IPv6 literal
    request(b"GET / HTTP/1.1", b"Host: [::1]"),
    request(b"GET / HTTP/1.1", b"Host: [::1"),
    request(b"GET / HTTP/1.1", b"Host: u:p@h.example:1"),  # userinfo
    request(b"GET / HTTP/1.1", b"Host: a.example", b"Host: b.example"),  # conflicting
    request(b"GET / HTTP/1.1", b"Host: a.example", b"Host: A.example"),  # same, twice
    request(b"GET / HTTP/1.1", b"Host: a", b"host: a"),
    request(b"GET / HTTP/1.1", b"Host:"),  # empty host
    request(b"GET / HTTP/1.1", b"Host:   "),
    request(b"GET / HTTP/1.1", b"Host: :80"),
    request(b"GET / HTTP/1.1", b"Host: h:"),
    request(b"GET / HTTP/1.1", b"Host: a:b:80"),
    request(b"GET / HTTP/1.1", b"Host: h:8a"),
    request(b"GET / HTTP/1.1", b"Host: h_x"),
    request(b"GET / HTTP/1.1", b"Host: caf\xe9.example"),
    request(b"GET / HTTP/1.1", b"Host: \xa0h\x85"),  # str.strip() would drop these
    request(b"GET / HTTP/1.1", b"Host: h\x0b"),
    request(b"GET / HTTP/1.1", b"Host: h\x0c"),
    request(b"GET / HTTP/1.1", b"Host: h\r"),  # CR CR LF
    request(b"GET / HTTP/1.1", b"Host: a b"),
    request(b"GET / HTTP/1.1", b" Host: h"),  # continuation-like lines
    request(b"GET / HTTP/1.1", b"\tHost: h"),
    request(b"GET / HTTP/1.1", b"Host: h", b" folded"),
    request(b"GET / HTTP/1.1", b"Accept: */*", b"\tcontinued"),
    request(b"GET / HTTP/1.1", b"\rX: y"),
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\nHost: x\r\n\r\n",  # CR CR LF is no blank line
    b"GET / HTTP/1.1\r\n\r\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n \r\nHost: x\r\n\r\n",
    request(b"GET / HTTP/1.1", b"Hostname: x"),
    request(b"GET / HTTP/1.1", b"Host\x0b: h"),  # no Host field for the full parser
    request(b"GET / HTTP/1.1", b"Host\xa0: h"),
    request(b"GET / HTTP/1.1", b"Host:\x0bh"),
    request(b"GET / HTTP/1.1", b"Host:\xa0h"),
    request(b"GET / HTTP/1.1", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"),
    request(b"GET / HTTP/1.1\r"),  # CR CR LF after the request line
    request(b"GET / HTTP/1.2"),
    request(b"GET / HTTP/2.0"),
    request(b"GET / http/1.1"),
    request(b"GET  / HTTP/1.1"),
    request(b"GET / HTTP/1.1 x"),
    request(b"GET /a\x00b HTTP/1.1"),
    request(b"GET /a\x7f HTTP/1.1"),
    request(b"GET a HTTP/1.1"),
    request(b"GET /"),  # HTTP/0.9
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n",  # incomplete
    b"GET / HTTP/1.1\r\nHost: h\r\n\r",
    b"GET / HTTP/1.1",
    b"GE",
    b"",
    b"\x16\x03\x01\x00\x05hello",
    b"SSH-2.0-OpenSSH_9.2p1\r\n",
]
CORPUS = COMMON + UNUSUAL


def assert_same(data: bytes) -> ProbeResult:
    """probe_http and the full parser agree on ``data`` (value and type); the verdict."""
    fast = probe_http(data)
    full = _probe_http_full(data)
    assert fast == full and type(fast) is type(full), f"{data!r}: {fast!r} != {full!r}"
    return fast


def test_sample_requests() -> None:
    assert probe_http(BENCH) == Preamble(
        protocol="http", method="GET", target="/", path="/", host="bench",
        http_version="HTTP/1.1",
    )
    assert probe_http(CURL) == Preamble(
        protocol="http", method="GET", target="/app/x?y=1", path="/app/x",
        host="www.example.com", http_version="HTTP/1.1",
    )


@pytest.mark.parametrize("data", COMMON)
def test_common_shape_takes_fast_path(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _probe_http_full(data)
    assert isinstance(expected, Preamble)
    common = _probe_http_common(data)
    assert type(common) is Preamble and common == expected

    def no_full_parse(data: bytes) -> ProbeResult:
        raise AssertionError("fell back to the full parser")

    monkeypatch.setattr(http, "_probe_http_full", no_full_parse)
    assert probe_http(data) == expected


@pytest.mark.parametrize("data", UNUSUAL)
def test_unusual_shape_falls_back(data: bytes) -> None:
    assert _probe_http_common(data) is None
    assert_same(data)


@pytest.mark.parametrize("data", CORPUS)
def test_every_prefix(data: bytes) -> None:
    for n in range(len(data) + 1):
        assert_same(data[:n])


@pytest.mark.parametrize("name", all_fixture_names())
def test_fixture_and_every_prefix(name: str) -> None:
    data = fixture(name)
    whole = assert_same(data)
    assert isinstance(whole, Preamble) == name.startswith("http/")
    for n in range(len(data)):
        assert_same(data[:n])


def test_size_limit() -> None:
    """Buffers over _COMMON_MAX_BYTES go to the full parser, with the same answer."""

    def padded(pad: int) -> bytes:
        return request(b"GET / HTTP/1.1", b"Host: Big.Example", b"X-Pad: " + b"p" * pad)

    at_limit = padded(_COMMON_MAX_BYTES - len(padded(0)))
    over = padded(_COMMON_MAX_BYTES - len(padded(0)) + 1)
    assert (len(at_limit), len(over)) == (_COMMON_MAX_BYTES, _COMMON_MAX_BYTES + 1)
    expected = Preamble(
        protocol="http", method="GET", target="/", path="/", host="big.example",
        http_version="HTTP/1.1",
    )
    assert _probe_http_common(at_limit) == expected
    assert _probe_http_common(over) is None
    assert assert_same(at_limit) == assert_same(over) == expected


def test_incomplete_block_skips_the_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    """No blank line yet: the fast path answers None without running its regex."""

    class Untouchable:
        def match(self, text: str) -> None:
            raise AssertionError(f"regex run on {text!r}")

    monkeypatch.setattr(http, "_COMMON_REQUEST", Untouchable())
    for data in (BENCH[:-2], BENCH[:-1], CURL[:40], b"GET / HTTP/1.1\nHost: h\n"):
        assert _probe_http_common(data) is None
        assert probe_http(data) is NEED_MORE


# -- seeded fuzz ------------------------------------------------------------------

FUZZ_SEED = 0x9112
FUZZ_GENERATED = 14_000
FUZZ_MUTATED = 6_000

# (usual, unusual) choices for each part of a generated request.
_METHODS = ([*sorted(METHODS)], [b"get", b"GETS", b"PRI", b"OPTION", b""])
_TARGETS = (
    [b"/", b"/a/b", b"/x?y=1", b"/x#f", b"/x?y#z", b"/#?", b"//h/p", b"/a://b", b"/%7e\xe9"],
    [b"*", b"http://A.example:81/p?q", b"https://u@h.example", b"h.example:443",
     b"[::1]:8080", b"", b"/a b", b"/\x7f", b"/\x00"],
)
_VERSIONS = ([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/1.2", b"http/1.1", b"HTTP/2.0", b"HTTP/1.1 "])
_EOLS = ([b"\r\n", b"\n"], [b"\r\r\n", b"\r", b""])
_HOST_NAMES = (
    [b"Host", b"host", b"HOST", b"hOsT", b"Host ", b"Host\t"],
    [b" Host", b"\tHost", b"Hostname", b"X-Host", b"Hos"],
)
_HOST_VALUES = (
    [b"bench", b"Www.Example.COM:8080", b"127.0.0.1:80", b" h ", b"\th\t", b"H.Example.", b"-"],
    [b"[::1]:8080", b"[::1]", b"u@h", b"h:99999", b"h:", b":80", b"", b"h\x0b", b"\xa0h",
     b"h\x85", b"h_x", b"a:b:80", b"h:8a", b"h\r", b"caf\xe9"],
)
_OTHER_HEADERS = (
    [b"User-Agent: curl/7.88.1", b"Accept: */*", b"Connection: close", b"X:",
     b"Content-Length: 5", b"Referer: http://localhost/"],
    [b"hello", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA", b" folded", b"\tfolded", b"\rX: y"],
)
_TOKENS = [
    b" ", b"\t", b"\r", b"\n", b"\r\n", b"\n\n", b":", b"/", b"?", b"#", b"@", b"[", b"]",
    b"*", b"h", b"H", b"Host:", b"\nHost: x", b"\xa0", b"\x85", b"\x0b", b"\x00", b"\x7f",
    b"\xff", b"1", b".", b"-", b"HTTP/1.0", b"http://", b"CONNECT",
]


def _generated(rng: random.Random) -> bytes:
    """A request assembled from mostly usual parts, sometimes unusual, cut or damaged."""

    def pick(choices: tuple[list[bytes], list[bytes]]) -> bytes:
        return rng.choice(choices[rng.random() < 0.1])

    eol = pick(_EOLS)
    data = b"%s %s %s%s" % (pick(_METHODS), pick(_TARGETS), pick(_VERSIONS), eol)
    for _ in range(rng.randrange(5)):
        if rng.random() < 0.4:
            line = pick(_HOST_NAMES) + b":" + rng.choice([b" ", b"", b"\t"]) + pick(_HOST_VALUES)
        else:
            line = pick(_OTHER_HEADERS)
        data += line + (pick(_EOLS) if rng.random() < 0.1 else eol)
    data += pick(_EOLS) if rng.random() < 0.1 else eol
    if rng.random() < 0.2:
        data += rng.choice([b"body", b"Host: late\r\n\r\n", b"X: y\n\n", b"\x16\x03\x01"])
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        pos = rng.randrange(len(data) + 1)
        kind = rng.randrange(3)
        if kind == 0:
            data = data[:pos] + rng.choice(_TOKENS) + data[pos:]
        elif kind == 1:
            data = data[:pos] + data[pos + rng.randint(1, 3):]
        else:
            data = data[:pos]
    return data


def test_fuzz_generated_requests() -> None:
    rng = random.Random(FUZZ_SEED)
    fast = 0
    verdicts = {NO: 0, NEED_MORE: 0}
    for _ in range(FUZZ_GENERATED):
        data = _generated(rng)
        verdict = assert_same(data)
        fast += _probe_http_common(data) is not None
        if not isinstance(verdict, Preamble):
            verdicts[verdict] += 1
    # Both paths and all three kinds of answer are exercised, not just one of them.
    assert FUZZ_GENERATED // 10 < fast < FUZZ_GENERATED // 2, fast
    assert min(verdicts.values()) > FUZZ_GENERATED // 50, verdicts
    assert FUZZ_GENERATED - sum(verdicts.values()) > fast, verdicts


def test_fuzz_random_mutations() -> None:
    seeds = [data for data in CORPUS if data] + [fixture(n) for n in all_fixture_names()
                                                if n.startswith("http/")]
    per_seed = FUZZ_MUTATED // len(seeds) + 1
    fast = 0
    for index, data in enumerate(seeds):
        for mutant in mutations(data, per_seed, seed=FUZZ_SEED + index):
            assert_same(mutant)
            fast += _probe_http_common(mutant) is not None
    assert fast > 100, fast


def test_plain_repeats_match_like_possessive_ones() -> None:
    """The pattern Python 3.10 gets (no possessive repeats) matches exactly the same."""
    plain = re.compile(http._COMMON_PATTERN.replace("*+", "*").replace("++", "+"))
    assert plain.pattern != http._COMMON_PATTERN or sys.version_info < (3, 11)
    rng = random.Random(FUZZ_SEED + 1)
    matched = 0
    for data in CORPUS + [_generated(rng) for _ in range(3_000)]:
        text = data.decode("latin-1")
        possessive, greedy = http._COMMON_REQUEST.match(text), plain.match(text)
        assert (possessive is None) == (greedy is None), data
        if possessive is not None and greedy is not None:
            assert possessive.span() == greedy.span(), data
            assert possessive.groups() == greedy.groups(), data
            matched += 1
    assert matched > 300, matched
