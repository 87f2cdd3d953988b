"""Tests for the OpenVPN (TCP) hard-reset probe."""

from __future__ import annotations

import struct

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.dns import probe_dns
from portmux.protocols.openvpn import MAX_PACKET, PROBE, probe_openvpn
from portmux.testing import assert_probe_verdict_for_every_split

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names

SESSION = bytes(range(1, 9))


def packet(body: bytes, opcode: int = 7, key_id: int = 0) -> bytes:
    data = bytes([opcode << 3 | key_id]) + body
    return struct.pack("!H", len(data)) + data


@pytest.mark.parametrize(
    ("name", "version"),
    [("openvpn/openvpn-tcp.bin", "2"), ("openvpn/openvpn-tls-auth.bin", "2"),
     ("openvpn/openvpn-tls-crypt-v2.bin", "3")],
)
def test_fixtures(name: str, version: str) -> None:
    assert_fixture(probe_openvpn, name, protocol="openvpn", version=version)


@pytest.mark.parametrize(
    "data",
    [
        packet(SESSION + b"\x00" + bytes(4)),  # no --tls-auth
        packet(SESSION + b"\xaa" * 32 + b"\x00\x00\x00\x01" + b"tttt" + bytes(5)),  # SHA256 HMAC
        packet(SESSION + b"\x00\x00\x00\x01tttt" + b"\xbb" * 40),  # --tls-crypt
        packet(SESSION + bytes(8) + b"\xcc" * 32 + b"w" * 100 + struct.pack("!H", 102), opcode=10),
    ],
)
def test_layouts(data: bytes) -> None:
    assert isinstance(probe_openvpn(data), Preamble)
    assert_probe_verdict_for_every_split(probe_openvpn, data)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x0e", packet(SESSION + bytes(5))[:-1]])
def test_need_more(data: bytes) -> None:
    assert probe_openvpn(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x09", b"\x00\x0e\x39", b"\x00\x0e\x20",  # too long; key id 1; P_CONTROL_V1
        b"\x00\x0d\x38", b"\x08\x01\x38",  # shorter than a reset; longer than MAX_PACKET
        packet(SESSION + b"\x01" + bytes(4)),  # an ack in the first packet, no wrapping
        packet(SESSION + b"\xaa" * 20 + b"\x00\x00\x00\x02" + b"tttt" + bytes(5)),  # packet id 2
        packet(SESSION + bytes(8) + b"\xcc" * 32 + b"\x00\x10", opcode=10),  # wrapped key too short
        packet(SESSION + bytes(8) + b"\xcc" * 32 + b"\x04\x00", opcode=10),  # ... too long
        b"\x16\x03\x01\x02\x00",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_openvpn(data) is NO


def test_dns_query_is_left_to_dns() -> None:
    """A query whose ID starts with 0x38 has the shape of a tls-crypt hard reset."""
    message = b"\x38\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
    message += b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    message += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x08" + bytes(8)
    data = struct.pack("!H", len(message)) + message
    assert isinstance(probe_dns(data), Preamble)
    assert probe_openvpn(data) is NO


def test_bounded() -> None:
    assert probe_openvpn(struct.pack("!H", MAX_PACKET) + b"\x38") is NEED_MORE
    assert probe_openvpn(struct.pack("!H", MAX_PACKET + 1) + b"\x38") is NO


def test_fuzzed() -> None:
    assert_fuzzed(probe_openvpn, [fixture(n) for n in fixture_names("openvpn")])


def test_probe_object() -> None:
    assert PROBE.name == "openvpn" and PROBE.probe(b"\x16") is NO
