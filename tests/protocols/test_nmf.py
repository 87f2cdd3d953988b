"""The [MC-NMF] preamble probe: byte sequences built from the spec's record layouts, and Mono's WCF client captured."""

from __future__ import annotations

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.nmf import MAX_VIA, Record, decode_size, encode_size, probe_nmf, read_records
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import assert_verdict, fixture, mutations


def version(major: int = 1, minor: int = 0) -> bytes:
    return bytes([0x00, major, minor])


def mode(value: int = 0x02) -> bytes:
    return bytes([0x01, value])


def via(uri: bytes) -> bytes:
    return b"\x02" + encode_size(len(uri)) + uri


def known_encoding(value: int = 0x08) -> bytes:
    return bytes([0x03, value])


def sized(record_type: int, body: bytes) -> bytes:
    return bytes([record_type]) + encode_size(len(body)) + body


PREAMBLE_END = b"\x0c"

# The duplex-session preamble of [MC-NMF] section 4: Version 1.0, Mode Duplex (0x02),
# Via, Known Encoding 0x08 (binary with in-band dictionary, i.e. binary session), End.
VIA = b"net.tcp://host/path"
SPEC_DUPLEX = version() + mode(0x02) + via(VIA) + known_encoding(0x08) + PREAMBLE_END
assert SPEC_DUPLEX == (
    b"\x00\x01\x00\x01\x02\x02\x13net.tcp://host/path\x03\x08\x0c"
)

# [MC-NMFMQ] section 4 prints this capture byte for byte (Singleton-Sized mode, no End).
SPEC_MSMQ = bytes.fromhex("000100010402 2b") + b"net.msmq://localhost/private/transactionalq" + (
    b"\x03\x07"
)


def test_spec_duplex_example() -> None:
    result = probe_nmf(SPEC_DUPLEX)
    assert result == Preamble(
        protocol="nmf", via="net.tcp://host/path", version="1.0", mode="duplex", consumed=0
    )


def test_spec_msmq_example() -> None:
    result = probe_nmf(SPEC_MSMQ)
    assert isinstance(result, Preamble)
    assert result.via == "net.msmq://localhost/private/transactionalq"
    assert result.mode == "singleton-sized"
    assert result.error is None


@pytest.mark.parametrize("data", [SPEC_DUPLEX, SPEC_MSMQ], ids=["duplex", "msmq"])
def test_every_prefix_and_split(data: bytes) -> None:
    decided = assert_probe_prefixes(probe_nmf, data)
    assert_probe_verdict_for_every_split(probe_nmf, data)
    # Matches once the Via record is complete: 3 + 2 + 1 (type) + 1 (size) + len(via).
    via_len = data[6]
    assert decided == 7 + via_len


@pytest.mark.parametrize(
    ("name", "mode", "encoding"),
    [("nmf/mono-buffered.bin", "duplex", 0x08), ("nmf/mono-streamed.bin", "singleton-unsized", 0x07)],
)
def test_mono_wcf_client_preambles(name: str, mode: str, encoding: int) -> None:
    """Mono's NetTcpBinding client, captured: matched at the Via, whole, byte by byte, split."""
    data = fixture(name)
    result = probe_nmf(data)
    assert isinstance(result, Preamble)
    assert result.mode == mode and result.version == "1.0" and result.error is None
    assert result.via is not None and result.via.endswith("/orders/Service.svc")
    assert [r.type for r in read_records(data)] == [0x00, 0x01, 0x02, 0x03, 0x0C]
    assert list(read_records(data))[3].value == bytes([encoding])
    decided = assert_probe_prefixes(probe_nmf, data)
    assert decided == len(data) - 3  # the Via's end: Known Encoding and PreambleEnd follow
    assert_probe_verdict_for_every_split(probe_nmf, data)


def test_matches_before_preamble_end_so_upgrades_work() -> None:
    # A client asking for an upgrade waits for the server's UpgradeResponse before
    # sending PreambleEnd: the probe must not wait for it.
    data = version() + mode() + via(VIA) + known_encoding() + sized(0x09, b"application/ssl-tls")
    assert isinstance(probe_nmf(data), Preamble)


def test_long_via_with_two_octet_size() -> None:
    uri = b"net.tcp://service.example.com/" + b"a" * 200
    data = version() + mode(0x01) + via(uri) + known_encoding(0x03) + PREAMBLE_END
    assert data[6:8] == bytes([(len(uri) & 0x7F) | 0x80, len(uri) >> 7])
    result = probe_nmf(data)
    assert isinstance(result, Preamble) and result.via == uri.decode()
    assert result.mode == "singleton-unsized"
    assert_probe_verdict_for_every_split(probe_nmf, data)
    assert assert_probe_prefixes(probe_nmf, data) == 8 + len(uri)


def test_utf8_via() -> None:
    uri = "net.tcp://höst.example/ßervice/".encode()
    result = probe_nmf(version() + mode() + via(uri))
    assert isinstance(result, Preamble) and result.via == "net.tcp://höst.example/ßervice/"


@pytest.mark.parametrize(
    ("data", "error", "fields"),
    [
        (version(2, 0) + mode() + via(VIA), "UnsupportedVersion", {"version": "2.0"}),
        (version(0xFF, 1) + mode() + b"\x02", "UnsupportedVersion", {"version": "255.1"}),
        (version() + mode(0x05) + via(VIA), "UnsupportedMode", {"version": "1.0"}),
        (version() + mode(0x00) + b"\x02", "UnsupportedMode", {}),
        (version() + mode() + b"\x02\x03\xff\xfe\xfd", "MalformedVia", {"mode": "duplex"}),
        (version() + mode() + b"\x02\x00", "MalformedVia", {}),
        (version() + mode() + b"\x02\xff\xff\xff\xff\x1f", "MalformedVia", {}),
        (version() + mode() + b"\x02" + encode_size(MAX_VIA + 1), "ViaTooLong", {}),
    ],
    ids=["major2", "major255", "mode5", "mode0", "bad-utf8", "empty-via", "size-overflow",
         "via-too-long"],
)
def test_recognised_but_refused(data: bytes, error: str, fields: dict[str, str]) -> None:
    result = probe_nmf(data)
    assert isinstance(result, Preamble), result
    assert result.protocol == "nmf" and result.error == error and result.via is None
    for key, value in fields.items():
        assert getattr(result, key) == value
    assert_probe_prefixes(probe_nmf, data)
    assert_probe_verdict_for_every_split(probe_nmf, data)


def test_via_too_long_is_decided_at_the_size() -> None:
    data = version() + mode() + b"\x02" + encode_size(MAX_VIA + 1)
    assert probe_nmf(data[:-1]) is NEED_MORE
    assert isinstance(probe_nmf(data), Preamble)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01",  # not a Version record
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # TLS
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest: major version 0
        b"\x00\x01\x00\x02",  # no Mode record after Version
        b"\x00\x01\x00\x01\x02\x03",  # no Via record after Mode
    ],
)
def test_not_nmf_is_no_early(data: bytes) -> None:
    assert probe_nmf(data) is NO
    decided = next(n for n in range(len(data) + 1) if probe_nmf(data[:n]) is not NEED_MORE)
    assert decided <= 6


def test_empty_and_partial_are_need_more() -> None:
    for n in range(len(SPEC_DUPLEX) - 4):
        if n < 7 + len(VIA):
            assert probe_nmf(SPEC_DUPLEX[:n]) is NEED_MORE


def test_read_records_of_the_spec_example() -> None:
    assert list(read_records(SPEC_DUPLEX)) == [
        Record(0x00, b"\x01\x00"),
        Record(0x01, b"\x02"),
        Record(0x02, VIA),
        Record(0x03, b"\x08"),
        Record(0x0C, b""),
    ]


def test_read_records_extensible_encoding_and_upgrade() -> None:
    data = (
        version() + mode() + via(VIA) + sized(0x04, b"application/soap+xml")
        + sized(0x09, b"application/negotiate") + PREAMBLE_END + b"\x06ignored"
    )
    records = list(read_records(data))
    assert [r.type for r in records] == [0x00, 0x01, 0x02, 0x04, 0x09, 0x0C]
    assert records[3].value == b"application/soap+xml"
    assert records[4].value == b"application/negotiate"
    # Incomplete records stop the reader quietly.
    assert [r.type for r in read_records(data[:20])] == [0x00, 0x01]
    with pytest.raises(ValueError, match="0x06"):
        list(read_records(version() + b"\x06"))


@pytest.mark.parametrize(
    ("size", "encoded"),
    [
        (0x00, b"\x00"),
        (0x7F, b"\x7f"),
        (0x80, b"\x80\x01"),
        (0x3FFF, b"\xff\x7f"),
        (0x4000, b"\x80\x80\x01"),
        (0x1FFFFF, b"\xff\xff\x7f"),
        (0x200000, b"\x80\x80\x80\x01"),
        (0x0FFFFFFF, b"\xff\xff\xff\x7f"),
        (0x10000000, b"\x80\x80\x80\x80\x01"),
        (0xFFFFFFFF, b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_record_size_encoding_table(size: int, encoded: bytes) -> None:
    assert encode_size(size) == encoded
    assert decode_size(b"\xaa" + encoded + b"\xbb", 1) == (size, 1 + len(encoded))
    assert decode_size(encoded[:-1], 0) is None


def test_record_size_limits() -> None:
    with pytest.raises(ValueError):
        encode_size(0x100000000)
    with pytest.raises(ValueError):
        decode_size(b"\xff\xff\xff\xff\x10", 0)
    with pytest.raises(ValueError):
        decode_size(b"\x80\x80\x80\x80\x80\x01", 0)


def test_fuzz_never_raises() -> None:
    for seed, data in enumerate([SPEC_DUPLEX, SPEC_MSMQ]):
        for variant in mutations(data, 400, seed):
            assert_verdict(probe_nmf(variant))


@pytest.mark.parametrize("data", [SPEC_DUPLEX, SPEC_MSMQ], ids=["duplex", "msmq"])
def test_other_builtin_probes_say_no_at_once(data: bytes) -> None:
    from portmux.protocols import builtin_probes

    others = [p for p in builtin_probes() if p.name != "nmf"]
    assert others
    for probe in others:
        assert probe.probe(data[:2]) is NO, probe.name
        assert probe.probe(data) is NO, probe.name
