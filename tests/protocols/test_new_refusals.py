"""Through the multiplexer: an unrouted connection of each new protocol gets its refusal."""

from __future__ import annotations

import pytest

from portmux.core.routing import Match, Route
from portmux.targets.echo import EchoFactory
from portmux.targets.factory import FactoryTarget
from portmux.testing import feed_mux

from .helpers import fixture


@pytest.mark.parametrize(
    ("name", "starts"),
    [
        ("postgres/psql-startup.bin", b"E"),
        ("postgres/psql-sslrequest.bin", b"E"),
        ("mqtt/mosquitto-pub-v311.bin", b"\x20\x02\x00\x03"),
        ("mqtt/mosquitto-pub-v5.bin", b"\x20"),
        ("xmpp/slixmpp-client.bin", b"<?xml version='1.0'?><stream:stream from='chat.example'"),
        ("socks/curl-socks5.bin", b"\x05\xff"),
        ("socks/curl-socks4a.bin", b"\x00\x5b"),
        ("redis/redis-cli-ping.bin", b""),
        ("rdp/xfreerdp.bin", b""),
        ("dns/dig-tcp.bin", b""),
        ("openvpn/openvpn-tcp.bin", b""),
    ],
)
def test_unrouted_connection_is_refused_in_its_protocol(name: str, starts: bytes) -> None:
    other = Route("other", Match(protocol="tls"), FactoryTarget(EchoFactory()))
    transport = feed_mux([other], fixture(name)).transport
    written = transport.value()
    assert written.startswith(starts) and (starts or written == b"")
    assert transport.disconnecting


def test_a_route_takes_its_protocol() -> None:
    route = Route("pg", Match(protocol="postgres", user="alice"), FactoryTarget(EchoFactory()))
    transport = feed_mux([route], fixture("postgres/psql-startup.bin")).transport
    assert transport.value() == fixture("postgres/psql-startup.bin")  # echoed back
    assert not transport.disconnecting
