"""Tests for the Redis (RESP array) probe."""

from __future__ import annotations

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.redis import COMMANDS, PROBE, probe_redis
from portmux.protocols.tcpmux import probe_tcpmux
from portmux.testing import assert_probe_verdict_for_every_split

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names


@pytest.mark.parametrize(
    ("name", "command"),
    [("redis/redis-cli-ping.bin", "PING"), ("redis/redis-cli-auth.bin", "AUTH"),
     ("redis/redis-cli-resp3.bin", "HELLO")],
)
def test_fixtures(name: str, command: str) -> None:
    assert_fixture(probe_redis, name, protocol="redis", command=command)


def test_decides_at_the_command_name() -> None:
    data = fixture("redis/redis-cli-auth.bin")
    assert probe_redis(data[:13]) is NEED_MORE
    assert probe_redis(data[:14]).command == "AUTH"  # type: ignore[union-attr]


@pytest.mark.parametrize("data", [b"*2\r\n$6\r\nclient\r\n", b"*1\r\n$4\r\nPiNg\r\n"])
def test_command_is_case_insensitive(data: bytes) -> None:
    result = probe_redis(data)
    assert isinstance(result, Preamble) and result.command in COMMANDS
    assert_probe_verdict_for_every_split(probe_redis, data)


@pytest.mark.parametrize(
    "data", [b"", b"*", b"*1", b"*12\r", b"*1\r\n", b"*1\r\n$", b"*1\r\n$4\r\nPI", b"*1\r\n$4\r\nPING\r"]
)
def test_need_more(data: bytes) -> None:
    assert probe_redis(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"PING\r\n", b"AUTH x\r\n",  # inline commands are TCPMUX's (see the module docstring)
        b"*0\r\n", b"*-1\r\n", b"*01\r\n", b"*\r\n", b"*1\n", b"*1\r\r", b"*1x",
        b"*1\r\n$0\r\n", b"*1\r\n$5\r\nPING\r\n", b"*1\r\n$4\r\nPONG\r\n",
        b"*1\r\n$4\r\nPINGx", b"*1\r\n:4\r\n", b"*1\r\n$99\r\n",
        b"*" + b"9" * 8 + b"\r\n",  # more arguments than allowed
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_redis(data) is NO


def test_inline_ping_goes_to_tcpmux() -> None:
    assert probe_tcpmux(b"PING\r\n").service == "ping"  # type: ignore[union-attr]
    assert probe_redis(b"PING\r\n") is NO


def test_fuzzed() -> None:
    assert_fuzzed(probe_redis, [fixture(n) for n in fixture_names("redis")])


def test_probe_object() -> None:
    assert PROBE.name == "redis" and PROBE.probe(b"+") is NO
