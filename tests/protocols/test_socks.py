"""Tests for the SOCKS4/4a/5 probe and its refusals."""

from __future__ import annotations

import pytest

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols import REFUSERS
from portmux.protocols.socks import MAX_FIELD, PROBE, probe_socks, refuse

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names


@pytest.mark.parametrize(
    ("name", "version"),
    [("socks/curl-socks5.bin", "5"), ("socks/curl-socks5-auth.bin", "5"),
     ("socks/curl-socks4.bin", "4"), ("socks/curl-socks4a.bin", "4a")],
)
def test_fixtures(name: str, version: str) -> None:
    assert_fixture(probe_socks, name, protocol="socks", version=version)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x05", b"\x05\x02\x00", b"\x04", b"\x04\x01\x00\x50\x7f\x00\x00",
     b"\x04\x01\x00\x50\x7f\x00\x00\x01user", b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a.exa"],
)
def test_need_more(data: bytes) -> None:
    assert probe_socks(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x06", b"\x03\x00", b"\x05\x00", b"\x05\x01\xff", b"\x05\x02\x00\x00", b"\x05\x01\x0a",
        b"\x04\x03", b"\x04\x01\x00\x00",  # command 3; port 0
        b"\x04\x01\x00\x50\x00\x00\x00\x00\x00",  # 0.0.0.0
        b"\x04\x01\x00\x50\x7f\x00\x00\x01us\x01er\x00",
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00",  # 4a with an empty host
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a b\x00",
        b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * (MAX_FIELD + 1),
        b"\x16\x03\x01\x02\x00",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_socks(data) is NO


def test_field_limits() -> None:
    user = b"u" * MAX_FIELD
    assert probe_socks(b"\x04\x01\x00\x50\x7f\x00\x00\x01" + user + b"\x00") is not NO
    host = b"h" * MAX_FIELD
    assert probe_socks(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + host + b"\x00") is not NO
    assert probe_socks(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + host + b"h") is NO


def test_fuzzed() -> None:
    assert_fuzzed(probe_socks, [fixture(n) for n in fixture_names("socks")])


def test_refusals() -> None:
    assert REFUSERS["socks"] is refuse
    assert refuse(Preamble(protocol="socks", version="5"), refusal.NOT_FOUND, "x") == b"\x05\xff"
    four = refuse(Preamble(protocol="socks", version="4a"), refusal.NOT_FOUND, "x")
    assert four == b"\x00\x5b" + bytes(6)
    assert refuse(Preamble(protocol="socks"), refusal.TIMEOUT, "x") == b""


def test_probe_object() -> None:
    assert PROBE.name == "socks" and PROBE.probe(b"\x05\x01\x00") == Preamble(
        protocol="socks", version="5")
