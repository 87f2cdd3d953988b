"""Tests for the RDP (TPKT + X.224 Connection Request) probe."""

from __future__ import annotations

import struct

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.rdp import MAX_REQUEST, PROBE, probe_rdp
from portmux.testing import assert_probe_verdict_for_every_split

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names

NEG_REQ = b"\x01\x00\x08\x00\x03\x00\x00\x00"


def request(variable: bytes) -> bytes:
    """TPKT + X.224 CR around ``variable`` (cookie, negotiation request...)."""
    x224 = b"\xe0\x00\x00\x00\x00\x00" + variable
    return b"\x03\x00" + struct.pack("!H", 5 + len(x224)) + bytes([len(x224)]) + x224


@pytest.mark.parametrize(
    ("name", "cookie"),
    [("rdp/xfreerdp.bin", "alice"), ("rdp/xfreerdp-rdp-security.bin", "bob")],
)
def test_fixtures(name: str, cookie: str) -> None:
    assert_fixture(probe_rdp, name, protocol="rdp", cookie=cookie)


@pytest.mark.parametrize(
    ("variable", "cookie"),
    [
        (b"", None),
        (NEG_REQ, None),
        (b"Cookie: msts=3640205228.15629.0000\r\n" + NEG_REQ, None),  # a routing token
        (b"Cookie: mstshash=Admin\r\n" + NEG_REQ + b"\x06\x00\x24\x00" + bytes(32), "Admin"),
    ],
)
def test_variants(variable: bytes, cookie: str | None) -> None:
    data = request(variable)
    assert probe_rdp(data) == Preamble(protocol="rdp", cookie=cookie)
    assert_probe_verdict_for_every_split(probe_rdp, data)


@pytest.mark.parametrize("data", [b"", b"\x03", b"\x03\x00\x00", request(NEG_REQ)[:-1]])
def test_need_more(data: bytes) -> None:
    assert probe_rdp(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x04", b"\x03\x01", b"\x03\x00\x00\x0a", b"\x03\x00\x01\x04",  # length 10, 260
        b"\x03\x00\x00\x13\x0f", b"\x03\x00\x00\x13\x0e\xd0",  # LI mismatch; not a CR
        request(NEG_REQ)[:6] + b"\x00\x01",  # DST-REF
        request(NEG_REQ)[:10] + b"\x40",  # class 4
        request(b"Cookie: mstshash=a"),  # no CRLF
        request(b"Cookie: mstshash=a\x01\r\n"),
        request(b"\x01\x00\x09\x00" + bytes(5)),
        request(NEG_REQ + b"x"),
        request(b"garbage"),
        b"\x16\x03\x01\x02\x00",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_rdp(data) is NO


def test_bounded() -> None:
    cookie = b"Cookie: mstshash=" + b"x" * (MAX_REQUEST - 11 - 19) + b"\r\n"
    assert isinstance(probe_rdp(request(cookie)), Preamble)
    assert len(request(cookie)) == MAX_REQUEST
    assert probe_rdp(b"\x03\x00" + struct.pack("!H", MAX_REQUEST + 1)) is NO


def test_fuzzed() -> None:
    assert_fuzzed(probe_rdp, [fixture(n) for n in fixture_names("rdp")])


def test_probe_object() -> None:
    assert PROBE.name == "rdp" and PROBE.probe(b"\x00") is NO
