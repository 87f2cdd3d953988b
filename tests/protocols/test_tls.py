"""Tests for the TLS ClientHello probe."""

from __future__ import annotations

import random

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.tls import (
    PROBE,
    ClientHello,
    is_grease,
    parse_client_hello,
    probe_tls,
    version_name,
)
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import (
    alpn_ext,
    assert_verdict,
    client_hello,
    client_hello_body,
    ext,
    fixture,
    fixture_names,
    mlkem_client_hello,
    mutations,
    records,
    sni_ext,
    u8,
    u16,
    u24,
    vec16,
    versions_ext,
)

V13 = ("TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1")

EXPECTED = {
    "tls/openssl-sni-alpn.bin": ("a.example.com", ("h2", "http/1.1"), V13),
    "tls/openssl-tls12-nosni.bin": (None, (), ("TLSv1.2",)),
    "tls/openssl-ffdhe8192.bin": ("big.example.com", ("h2", "http/1.1"), V13),
    "tls/curl-http1.1.bin": ("a.example.com", ("http/1.1",), V13),
    "tls/curl-http2.bin": ("a.example.com", ("h2", "http/1.1"), V13),
    "tls/python-ssl.bin": ("py.example.org", (), ("TLSv1.3", "TLSv1.2")),
    "tls/synthetic-x25519mlkem768.bin": (
        "pq.example.com", ("h2", "http/1.1"), ("TLSv1.3", "TLSv1.2")
    ),
}


def test_every_fixture_has_expectations() -> None:
    assert set(fixture_names("tls")) == set(EXPECTED) | {"tls/openssl-multirecord.bin"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_whole(name: str) -> None:
    sni, alpn, versions = EXPECTED[name]
    result = probe_tls(fixture(name))
    assert result == Preamble(protocol="tls", sni=sni, alpn=alpn, tls_versions=versions)


@pytest.mark.parametrize("name", fixture_names("tls"))
def test_fixture_prefixes_and_splits(name: str) -> None:
    data = fixture(name)
    step = 1 if len(data) < 4096 else 97
    assert assert_probe_prefixes(probe_tls, data, step) == len(data)
    assert_probe_verdict_for_every_split(probe_tls, data, step=step)


def test_multirecord_fixture() -> None:
    """A real 20 kB hello from openssl spans two handshake records."""
    data = fixture("tls/openssl-multirecord.bin")
    first = int.from_bytes(data[3:5], "big")
    assert first == 2**14 and data[5 + first] == 22
    result = probe_tls(data)
    assert isinstance(result, Preamble)
    assert result.sni == "multi.example.com"
    assert result.alpn[:2] == ("h2", "http/1.1") and len(result.alpn) == 302
    assert probe_tls(data[: 5 + first]) is NEED_MORE
    assert probe_tls(data[: 5 + first + 5]) is NEED_MORE
    assert probe_tls(data[:-1]) is NEED_MORE


def test_mlkem_hello_over_small_records() -> None:
    """A >1500-byte post-quantum hello split across handshake records of 300 bytes."""
    whole = mlkem_client_hello()
    assert len(whole) > 1500
    split = mlkem_client_hello(record_size=300)
    assert split.count(b"\x16\x03\x01") >= 6
    assert probe_tls(split) == probe_tls(whole)
    assert_probe_prefixes(probe_tls, split)
    assert_probe_verdict_for_every_split(probe_tls, split, step=7)


def test_hello_split_across_two_records() -> None:
    data = client_hello(record_size=40)
    assert probe_tls(data) == Preamble(
        protocol="tls", sni="a.example.com", alpn=("h2", "http/1.1"), tls_versions=V13[:2]
    )


def test_parse_client_hello() -> None:
    data = fixture("tls/openssl-sni-alpn.bin")
    hello = parse_client_hello(data + b"\x17\x03\x03\x00\x01x")
    assert isinstance(hello, ClientHello)
    assert hello.record_bytes == len(data)
    assert hello.legacy_version == 0x0303
    assert 0x1301 in hello.cipher_suites
    assert hello.supported_versions[0] == 0x0304
    assert hello.extensions[0][0] == 0
    assert parse_client_hello(data[:-1]) is None
    assert parse_client_hello(b"GET / HTTP/1.1\r\n") is None


def test_trailing_bytes_after_hello_are_ignored() -> None:
    data = client_hello() + b"\x14\x03\x03\x00\x01\x01"
    assert isinstance(probe_tls(data), Preamble)


def test_empty_needs_more() -> None:
    assert probe_tls(b"") is NEED_MORE
    assert probe_tls(b"\x16") is NEED_MORE
    assert probe_tls(b"\x16\x03\x01\x02") is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"G",
        b"\x15\x03\x01\x00\x02\x02\x28",  # alert record
        b"\x17",
        b"\x16\x02",  # major version 2
        b"\x16\x03\x09",  # minor version out of range
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01",  # record longer than 2^14
        b"\x16\x03\x01\x00\x10\x02",  # ServerHello, not ClientHello
        b"\x16\x03\x01\x40\x00\x01\x01\x00\x01",  # declares a 65537-byte hello
    ],
)
def test_decided_no_early(data: bytes) -> None:
    assert probe_tls(data) is NO


def test_sslv2_compatible_hello_is_no() -> None:
    sslv2 = b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37)
    assert probe_tls(sslv2) is NO
    assert probe_tls(sslv2[:1]) is NO


def test_sni_upper_case_and_trailing_dot() -> None:
    result = probe_tls(client_hello(sni=b"WWW.Example.COM."))
    assert isinstance(result, Preamble) and result.sni == "www.example.com"


@pytest.mark.parametrize(
    "name",
    [b"", b".", b"a..b", b"bad host", b"caf\xc3\xa9.example", b"-a.example",
     b"a" * 64 + b".example", b"x." * 127 + b"x", b"a\x00b"],
)
def test_invalid_sni_is_absent(name: bytes) -> None:
    if not name:
        data = records(client_hello_body([ext(0, vec16(u8(0) + vec16(b"")))]))
        assert probe_tls(data) is NO  # host_name<1..2^16-1> cannot be empty
        return
    result = probe_tls(client_hello(sni=name))
    assert isinstance(result, Preamble) and result.sni is None


def test_sni_ignores_other_name_types() -> None:
    body = vec16(u8(7) + vec16(b"other") + u8(0) + vec16(b"b.example"))
    result = probe_tls(records(client_hello_body([ext(0, body)])))
    assert isinstance(result, Preamble) and result.sni == "b.example"


def test_grease_dropped() -> None:
    data = records(
        client_hello_body(
            [ext(0x0A0A, b""), sni_ext(b"g.example"), versions_ext([0x3A3A, 0x0304, 0x0303]),
             ext(0xFAFA, b"\x00")],
            cipher_suites=(0x8A8A, 0x1301),
        )
    )
    result = probe_tls(data)
    assert isinstance(result, Preamble)
    assert result.tls_versions == ("TLSv1.3", "TLSv1.2")
    assert is_grease(0x2A2A) and not is_grease(0x0303) and not is_grease(0x2A2B)


def test_unknown_version_named_in_hex() -> None:
    result = probe_tls(client_hello(versions=[0x0305, 0x0304]))
    assert isinstance(result, Preamble)
    assert result.tls_versions == ("0x0305", "TLSv1.3", "TLSv1.2")
    assert version_name(0x0300) == "SSLv3"


def test_hello_without_extensions() -> None:
    result = probe_tls(records(client_hello_body(None, legacy_version=0x0301)))
    assert result == Preamble(protocol="tls", tls_versions=("TLSv1",))


def test_alpn_decoded_latin1() -> None:
    result = probe_tls(client_hello(alpn=[b"h2", b"\xff\x00x"]))
    assert isinstance(result, Preamble) and result.alpn == ("h2", "\xff\x00x")


@pytest.mark.parametrize(
    "extensions",
    [
        [ext(0, vec16(u8(0) + u16(50) + b"short"))],  # host_name overruns list
        [ext(0, vec16(u8(0) + vec16(b"a.example")) + b"x")],  # junk after list
        [ext(0, b"")],  # empty server_name in a ClientHello
        [alpn_ext([b"h2", b""])],  # empty protocol name
        [ext(16, vec16(b""))],  # empty ALPN list
        [ext(43, b"\x03\x03\x04\x03")],  # odd supported_versions length
        [ext(43, b"\x00")],  # empty supported_versions
        [sni_ext(b"a.example"), sni_ext(b"b.example")],  # duplicate extension
        [u16(0) + u16(500) + b"abc"],  # extension longer than the block
        [u16(0)],  # truncated extension header
    ],
)
def test_malformed_extensions_are_no(extensions: list[bytes]) -> None:
    assert probe_tls(records(client_hello_body(extensions))) is NO


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x03\x03" + bytes(31),
        u16(0x0303) + bytes(32) + u8(33) + bytes(33),  # session id > 32
        u16(0x0303) + bytes(32) + u8(0) + u16(3) + b"\x13\x01\x13",  # odd suites
        u16(0x0303) + bytes(32) + u8(0) + u16(0),  # no cipher suites
        u16(0x0303) + bytes(32) + u8(0) + u16(2) + b"\x13\x01" + u8(0),  # no compression
        client_hello_body([sni_ext(b"a.example")]) + b"\x00",  # trailing junk
        u16(0x0203) + client_hello_body(None)[2:],  # legacy_version major 2
    ],
)
def test_malformed_bodies_are_no(body: bytes) -> None:
    assert probe_tls(records(body)) is NO


def test_hostile_lengths() -> None:
    declared = b"\x16\x03\x01\x00\x04\x01" + u24(65536)
    assert probe_tls(declared) is NEED_MORE  # plausible: up to 64 KiB is allowed
    assert probe_tls(b"\x16\x03\x01\x00\x04\x01" + u24(65537)) is NO
    assert probe_tls(b"\x16\x03\x01\xff\xff") is NO
    # A hello announcing more body than its own extensions block holds.
    body = client_hello_body([sni_ext(b"a.example")])
    wrong = u8(1) + u24(len(body) - 3) + body
    assert probe_tls(u8(22) + u16(0x0301) + vec16(wrong)) is NO


def test_other_record_between_fragments_is_no() -> None:
    data = client_hello(record_size=50)
    second = 5 + 50
    assert probe_tls(data[:second] + b"\x15\x03\x03\x00\x02\x02\x28") is NO


def test_fuzz_never_raises() -> None:
    rng = random.Random(8446)
    for _ in range(3000):
        assert_verdict(probe_tls(bytes(rng.randrange(256) for _ in range(rng.randrange(64)))))
        head = b"\x16\x03" + bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        assert_verdict(probe_tls(head))
    seeds = [fixture(n) for n in fixture_names("tls") if "multirecord" not in n]
    for i, data in enumerate(seeds):
        for variant in mutations(data, 400, i):
            assert_verdict(probe_tls(variant))
            assert_verdict(probe_tls(variant[:9]))


def test_probe_object() -> None:
    assert PROBE.name == "tls"
    assert PROBE.probe(b"G") is NO
