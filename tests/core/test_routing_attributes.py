"""Match keys for the issue-15 protocols: user, database, request, command, client_id, level, cookie, version."""

from __future__ import annotations

import pytest

from portmux.core.preamble import Preamble
from portmux.core.routing import ATTRIBUTE_KEYS, Match, Route, Router


def test_postgres_user_and_database() -> None:
    match = Match(protocol="postgres", user="alice", database="shop")
    assert match.accepts(Preamble("postgres", user="alice", database="shop"))
    assert not match.accepts(Preamble("postgres", user="Alice", database="shop"))
    assert not match.accepts(Preamble("postgres", user="alice", database="other"))
    assert not match.accepts(Preamble("postgres", request="ssl"))  # no user before TLS
    assert Match(request="SSL").accepts(Preamble("postgres", request="ssl"))
    assert not Match(request="ssl").accepts(Preamble("postgres", request="startup"))


def test_redis_command_is_case_insensitive() -> None:
    assert Match(command="ping").accepts(Preamble("redis", command="PING"))
    assert not Match(command="AUTH").accepts(Preamble("redis", command="PING"))
    assert not Match(command="AUTH").accepts(Preamble("http"))


def test_mqtt_client_id_and_level() -> None:
    preamble = Preamble("mqtt", client_id="sensor-17", level=4)
    assert Match(client_id="sensor-17", level=4).accepts(preamble)
    assert not Match(client_id="sensor").accepts(preamble)
    assert not Match(level=5).accepts(preamble)


def test_rdp_cookie_and_socks_version() -> None:
    assert Match(cookie="ALICE").accepts(Preamble("rdp", cookie="alice"))
    assert not Match(cookie="alice").accepts(Preamble("rdp"))
    assert Match(protocol="socks", version="4A").accepts(Preamble("socks", version="4a"))
    assert not Match(version="5").accepts(Preamble("socks", version="4"))


def test_describe_and_router() -> None:
    match = Match(protocol="postgres", user="alice", level=None)
    assert match.describe() == "protocol=postgres user=alice"
    router = Router([
        Route("alice", Match(protocol="postgres", user="alice"), object()),
        Route("pg", Match(protocol="postgres"), object()),
    ])
    assert router.select(Preamble("postgres", user="alice")).name == "alice"  # type: ignore[union-attr]
    assert router.select(Preamble("postgres", user="bob")).name == "pg"  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ATTRIBUTE_KEYS)
def test_every_attribute_key_is_a_preamble_field(key: str) -> None:
    assert key in Preamble._fields
