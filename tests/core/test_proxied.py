"""PROXY headers: a trusted one's addresses become the transport's; an untrusted one is refused."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from portmux.core.mux import Multiplexer
from portmux.core.proxied import present_addresses
from portmux.core.routing import Match, Route, parse_networks
from portmux.protocols.proxyheader import v1_header, v2_header
from portmux.testing import RecordingTarget, feed_mux

BALANCER = IPv4Address("TCP", "127.128.0.5", 5000)
CLIENT = IPv4Address("TCP", "127.64.2.7", 40000)
FRONT = IPv4Address("TCP", "127.51.100.1", 443)


def _logged() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    return events


@pytest.mark.parametrize("header", [v1_header(CLIENT, FRONT), v2_header(CLIENT, FRONT),
                                    b"PROXY UNKNOWN\r\n"])
def test_untrusted_header_is_refused_with_one_line(header: bytes) -> None:
    rest = RecordingTarget()
    events = _logged()
    try:
        fed = feed_mux([Route("rest", Match(default=True), rest)],
                       *[header[i:i + 1] for i in range(len(header))], b"GET / HTTP/1.0\r\n\r\n",
                       peer=BALANCER)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert rest.connections == []
    assert fed.closed and fed.written == b""
    lines = [e for e in events if "untrusted" in str(e.get("reason", ""))]
    assert len(lines) == 1
    assert lines[0]["reason"] == "PROXY header from untrusted 127.128.0.5"
    assert fed.mux.stats.refusals["proxy_header_untrusted"] == 1


@pytest.mark.parametrize("data", [b"PROXY / HTTP/1.1\r\nHost: a\r\n\r\n", b"PING\r\n",
                                  b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n\r\nx"])
def test_other_data_starting_alike_is_not_a_header(data: bytes) -> None:
    rest = RecordingTarget()
    feed_mux([Route("rest", Match(default=True), rest)], data)
    assert rest.received == data


def test_trusted_header_sets_peer_and_host_of_the_transport() -> None:
    rest = RecordingTarget()
    mux = Multiplexer(MemoryReactorClock(), [Route("rest", Match(default=True), rest)])
    mux.startFactory()
    factory = mux.listener_factory(parse_networks(["127.128.0.0/9"]))
    protocol = factory.buildProtocol(BALANCER)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.128.0.9", 8443),
                                peerAddress=BALANCER)
    protocol.makeConnection(transport)
    protocol.dataReceived(v2_header(CLIENT, FRONT) + b"\x01\x02 binary")
    connection = rest.connections[0]
    assert connection.peer == CLIENT
    assert (connection.transport.getPeer(), connection.transport.getHost()) == (CLIENT, FRONT)
    assert rest.received == b"\x01\x02 binary"


def test_present_addresses_leaves_a_side_without_an_address() -> None:
    transport = StringTransport(hostAddress=FRONT, peerAddress=BALANCER)
    assert present_addresses(transport, CLIENT, None)
    assert (transport.getPeer(), transport.getHost()) == (CLIENT, FRONT)
    assert not present_addresses(object(), CLIENT, FRONT)
