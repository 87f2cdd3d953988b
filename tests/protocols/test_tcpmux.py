"""Tests for the TCPMUX service-name probe."""

from __future__ import annotations

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.tcpmux import MAX_NAME, PROBE, probe_tcpmux
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import fixture


def tcpmux(service: str, consumed: int) -> Preamble:
    """A tcpmux Preamble."""
    return Preamble(protocol="tcpmux", service=service, consumed=consumed)


def test_nc_echo_fixture() -> None:
    data = fixture("tcpmux/nc-echo.bin")
    result = probe_tcpmux(data)
    assert result == tcpmux("echo", 6)
    assert data[result.consumed :] == b"hello"
    assert assert_probe_prefixes(probe_tcpmux, data) == 6
    assert_probe_verdict_for_every_split(probe_tcpmux, data)


def test_nc_help_fixture() -> None:
    data = fixture("tcpmux/nc-help.bin")
    assert probe_tcpmux(data) == tcpmux("help", 6)
    assert assert_probe_prefixes(probe_tcpmux, data) == 6
    assert_probe_verdict_for_every_split(probe_tcpmux, data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"echo\n", tcpmux("echo", 5)),
        (b"Orders/2\r\nrest", tcpmux("orders/2", 10)),
        (b"alice:orders\r\n", tcpmux("alice:orders", 14)),
        (b"a-b_c.d+e@f\r\n", tcpmux("a-b_c.d+e@f", 13)),
        (b"GET\r\n", tcpmux("get", 5)),
        (b"x" * MAX_NAME + b"\r\n", tcpmux("x" * MAX_NAME, MAX_NAME + 2)),
    ],
)
def test_match(data: bytes, expected: Preamble) -> None:
    assert probe_tcpmux(data) == expected


@pytest.mark.parametrize("data", [b"", b"e", b"echo", b"echo\r", b"x" * MAX_NAME])
def test_need_more(data: bytes) -> None:
    assert probe_tcpmux(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [b"\x16", b"\r\n", b"\n", b" ", b"GET ", b"GET / HTTP/1.1\r\n", b"echo\rX",
     b"ech o\r\n", b"x" * (MAX_NAME + 1), b"caf\xc3\xa9\r\n", b"a\tb", b"\x00"],
)
def test_no(data: bytes) -> None:
    assert probe_tcpmux(data) is NO


def test_probe_object() -> None:
    assert PROBE.name == "tcpmux" and PROBE.probe(b"help\r\n") == tcpmux("help", 6)
