"""Tests for the PostgreSQL probe and its ErrorResponse refusal."""

from __future__ import annotations

import struct

import pytest

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols import REFUSERS
from portmux.protocols.postgres import MAX_STARTUP, PROBE, probe_postgres, refuse
from portmux.testing import assert_probe_verdict_for_every_split

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names


def startup(*pairs: bytes, code: int = 196608) -> bytes:
    """A StartupMessage with ``name, value, ...`` parameters."""
    body = struct.pack("!I", code) + b"".join(p + b"\0" for p in pairs) + b"\0"
    return struct.pack("!I", 4 + len(body)) + body


def test_psql_startup_fixture() -> None:
    assert_fixture(probe_postgres, "postgres/psql-startup.bin", protocol="postgres",
                   request="startup", user="alice", database="shop", version="3.0")


def test_psql_sslrequest_fixture() -> None:
    result = assert_fixture(probe_postgres, "postgres/psql-sslrequest.bin", request="ssl")
    assert result.user is None and result.database is None


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\0\0\0\x08\x04\xd2\x16\x30", "gssenc"),
        (b"\0\0\0\x10\x04\xd2\x16\x2e" + bytes(8), "cancel"),
    ],
)
def test_special_requests(data: bytes, kind: str) -> None:
    assert probe_postgres(data) == Preamble(protocol="postgres", request=kind)
    assert_probe_verdict_for_every_split(probe_postgres, data)


def test_database_defaults_to_user() -> None:
    result = probe_postgres(startup(b"user", b"bob"))
    assert isinstance(result, Preamble)
    assert (result.user, result.database) == ("bob", "bob")


def test_protocol_3_2() -> None:
    result = probe_postgres(startup(b"user", b"u", code=0x00030002))
    assert isinstance(result, Preamble) and result.version == "3.2"


@pytest.mark.parametrize(
    "data",
    [b"", b"\0", b"\0\0\0", b"\0\0\0\x08", b"\0\0\0\x08\x04\xd2",
     startup(b"user", b"alice")[:-1], startup(b"user", b"alice")[:12]],
)
def test_need_more(data: bytes) -> None:
    assert probe_postgres(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x01", b"\0\x01", b"\0\0\0\x07", b"\0\0\x27\x11",  # too short / longer than 10000
        b"\0\0\0\x09\x04\xd2\x16\x2f\0",  # SSLRequest of the wrong length
        startup(b"user", b"a", code=0x00020000),  # protocol 2
        startup(b"user", b"a", code=0x00030003),
        startup(b"database", b"x"),  # no user
        startup(b"user", b""),
        startup(b"user", b"a\x01b"),
        startup(b"user", b"a", b"odd"),
        startup(b"user", b"a")[:-1] + b"x",  # unterminated
        struct.pack("!I", 30) + struct.pack("!I", 196608) + b"user\0a\x07",
        b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_postgres(data) is NO


def test_bounded() -> None:
    longest = startup(b"user", b"u", b"options", b"x" * (MAX_STARTUP - 30))
    assert len(longest) <= MAX_STARTUP
    assert isinstance(probe_postgres(longest), Preamble)
    too_long = startup(b"user", b"u", b"options", b"x" * MAX_STARTUP)
    assert probe_postgres(too_long[:8]) is NO


def test_fuzzed() -> None:
    corpus = [fixture(name) for name in fixture_names("postgres")]
    corpus.append(startup(b"user", b"alice", b"database", b"shop"))
    assert_fuzzed(probe_postgres, corpus)


def test_refusal_is_an_error_response() -> None:
    assert REFUSERS["postgres"] is refuse
    data = refuse(Preamble(protocol="postgres", request="ssl"), refusal.NOT_FOUND,
                  "no route for postgres")
    assert data[:1] == b"E"
    (length,) = struct.unpack_from("!I", data, 1)
    assert length == len(data) - 1
    fields = {f[:1]: f[1:] for f in data[5:-1].split(b"\0") if f}
    assert fields[b"S"] == b"FATAL" and fields[b"C"] == b"08004"
    assert fields[b"M"] == b"no route for postgres"
    assert data.endswith(b"\0\0")


def test_probe_object() -> None:
    assert PROBE.name == "postgres" and PROBE.probe(b"X") is NO
