"""The config's match table accepts the issue-15 protocols and their attribute keys."""

from __future__ import annotations

from portmux.core.preamble import Preamble

from .test_config import LISTEN, one_error, parse, route


def test_new_protocols_and_keys() -> None:
    config = parse(
        LISTEN
        + route('{ protocol = "postgres", user = "alice", database = "shop" }', "echo = true", "a")
        + route('{ protocol = "redis", command = "PING" }', "echo = true", "b")
        + route('{ protocol = "mqtt", client_id = "sensor-17", level = 4 }', "echo = true", "c")
        + route('{ protocol = "xmpp", host = "chat.example" }', "echo = true", "d")
        + route('{ protocol = "socks", version = "5" }', "echo = true", "e")
        + route('{ protocol = "rdp", cookie = "alice" }', "echo = true", "f")
        + route('{ protocol = "openvpn" }', "echo = true", "g")
        + route('{ protocol = "dns" }', "echo = true", "h")
    )
    matches = [r.match for r in config.routes]
    assert matches[0].accepts(Preamble("postgres", user="alice", database="shop"))
    assert matches[2].accepts(Preamble("mqtt", client_id="sensor-17", level=4))
    assert matches[5].accepts(Preamble("rdp", cookie="Alice"))


def test_level_must_be_an_integer() -> None:
    error = one_error(LISTEN + route('{ protocol = "mqtt", level = "4" }', "echo = true"))
    assert error.key_path == "route[0].match.level"
    assert error.message == 'expected an integer, got "4"'


def test_user_must_be_a_string() -> None:
    error = one_error(LISTEN + route('{ protocol = "postgres", user = 1 }', "echo = true"))
    assert error.key_path == "route[0].match.user"
