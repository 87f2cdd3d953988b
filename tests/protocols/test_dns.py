"""Tests for the DNS-over-TCP query probe."""

from __future__ import annotations

import struct

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.dns import MAX_QUERY, PROBE, probe_dns
from portmux.testing import assert_probe_verdict_for_every_split

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names

OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


def query(name: bytes = b"\x07example\x03com\x00", flags: int = 0x0100,
          counts: tuple[int, int, int, int] = (1, 0, 0, 0), qtype: int = 1, qclass: int = 1,
          extra: bytes = b"") -> bytes:
    message = struct.pack("!HH4H", 0x1234, flags, *counts) + name
    message += struct.pack("!HH", qtype, qclass) + extra
    return struct.pack("!H", len(message)) + message


@pytest.mark.parametrize("name", ["dns/dig-tcp.bin", "dns/dig-tcp-noedns.bin"])
def test_fixtures(name: str) -> None:
    assert_fixture(probe_dns, name, protocol="dns")


@pytest.mark.parametrize(
    "data",
    [
        query(), query(name=b"\x00", qtype=2),  # the root NS
        query(counts=(1, 0, 0, 1), extra=OPT),
        query(flags=0x2000, counts=(1, 1, 0, 0), qtype=6, extra=bytes(20)),  # NOTIFY
        query(flags=0x2800, counts=(1, 0, 2, 0), qtype=6, extra=bytes(30)),  # UPDATE
        query(qclass=3),  # CHAOS
    ],
)
def test_queries(data: bytes) -> None:
    assert probe_dns(data) == Preamble(protocol="dns")
    assert_probe_verdict_for_every_split(probe_dns, data)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x1d", query()[:14], query()[:-1]])
def test_need_more(data: bytes) -> None:
    assert probe_dns(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x03", b"\x00\x10", b"\x02\x01",  # too short, too long
        query(flags=0x8100), query(flags=0x0500), query(flags=0x0300), query(flags=0x0140),
        query(flags=0x0101), query(flags=0x1000),  # response, AA, TC, Z, RCODE, opcode 2
        query(counts=(0, 0, 0, 0)), query(counts=(2, 0, 0, 0)), query(counts=(1, 1, 0, 0)),
        query(counts=(1, 0, 0, 3)), query(counts=(1, 0, 0, 1)),  # the OPT record is missing
        query(name=b"\xc0\x0c"), query(name=b"\x40" + b"a" * 64 + b"\x00"),
        query(name=(b"\x3f" + b"a" * 63) * 4 + b"\x00"),  # longer than 255
        query(qtype=0), query(qclass=2),
        query(name=b"\x07example"),  # runs off the end
        b"\x16\x03\x01\x02\x00",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_dns(data) is NO


def test_bounded() -> None:
    padded = query(counts=(1, 0, 0, 1), extra=OPT + bytes(MAX_QUERY - 40))
    assert len(padded) - 2 <= MAX_QUERY and isinstance(probe_dns(padded), Preamble)
    assert probe_dns(struct.pack("!H", MAX_QUERY + 1)) is NO


def test_fuzzed() -> None:
    assert_fuzzed(probe_dns, [fixture(n) for n in fixture_names("dns")])


def test_probe_object() -> None:
    assert PROBE.name == "dns" and PROBE.probe(b"\x16") is NO
