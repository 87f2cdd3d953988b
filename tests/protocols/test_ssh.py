"""Tests for the SSH banner probe."""

from __future__ import annotations

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.ssh import MAX_BANNER, PROBE, probe_ssh
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import fixture


def test_openssh_fixture() -> None:
    data = fixture("ssh/openssh.bin")
    expected = Preamble(protocol="ssh", version="2.0", software="OpenSSH_9.2p1")
    assert probe_ssh(data) == expected
    assert assert_probe_prefixes(probe_ssh, data) == data.index(b"\n") + 1
    assert_probe_verdict_for_every_split(probe_ssh, data)


@pytest.mark.parametrize(
    ("data", "version", "software"),
    [
        (b"SSH-2.0-PuTTY_Release_0.80\r\n", "2.0", "PuTTY_Release_0.80"),
        (b"SSH-1.99-Old\n", "1.99", "Old"),
        (b"SSH-2.0-x y z\r\nkex", "2.0", "x"),
        (b"SSH-2.0-\r\n", "2.0", ""),
    ],
)
def test_banners(data: bytes, version: str, software: str) -> None:
    assert probe_ssh(data) == Preamble(protocol="ssh", version=version, software=software)


@pytest.mark.parametrize(
    "data", [b"", b"S", b"SSH-", b"SSH-1", b"SSH-1.9", b"SSH-2.0-", b"SSH-2.0-abc\r"]
)
def test_need_more(data: bytes) -> None:
    assert probe_ssh(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [b"G", b"s", b"SSH-1.5-", b"SSH-2.1", b"SSH-2.0x", b"ssh-2.0-x\r\n",
     b"SSH-2.0-a\x00b\r\n", b"SSH-2.0-a\rb", b"\x16\x03\x01"],
)
def test_no(data: bytes) -> None:
    assert probe_ssh(data) is NO


def test_banner_length_limit() -> None:
    longest = b"SSH-2.0-" + b"x" * (MAX_BANNER - 10) + b"\r\n"
    assert len(longest) == MAX_BANNER
    assert isinstance(probe_ssh(longest), Preamble)
    assert probe_ssh(longest[:-1]) is NEED_MORE
    assert probe_ssh(b"SSH-2.0-" + b"x" * (MAX_BANNER - 9) + b"\r\n") is NO
    assert probe_ssh(b"SSH-2.0-" + b"x" * 1000) is NO


def test_probe_object() -> None:
    assert PROBE.name == "ssh" and PROBE.probe(b"X") is NO
