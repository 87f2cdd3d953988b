"""Which routes make a one-word line TCPMUX (``+``, line consumed) and which see raw bytes."""

from __future__ import annotations

from twisted.internet.protocol import Factory

from portmux.core.routing import Match, Route, parse_networks
from portmux.targets.factory import FactoryTarget
from portmux.testing import RecordingProtocol, RecordingTarget, feed_mux


def test_default_route_gets_the_line_unchanged_and_no_plus() -> None:
    target = RecordingTarget()
    fed = feed_mux([Route("rest", Match(default=True), target)], b"PING\r\n")
    assert fed.written == b""
    assert target.received == b"PING\r\n"
    assert fed.preamble is not None and fed.preamble.protocol == "unknown"


def test_a_route_without_a_tcpmux_key_gets_raw_bytes() -> None:
    target = RecordingTarget(accept="ignored")
    fed = feed_mux([Route("lan", Match(network=parse_networks(["127.0.0.0/8"])), target)], b"stats\r\nmore")
    assert fed.written == b""
    assert target.received == b"stats\r\nmore"


def test_named_service_and_protocol_tcpmux_routes_answer_plus() -> None:
    echo = FactoryTarget(Factory.forProtocol(RecordingProtocol))
    fed = feed_mux([Route("echo", Match(service="echo"), echo)], b"echo\r\nhi")
    assert fed.written == b"+\r\n"
    catch_all = RecordingTarget(accept="")
    fed = feed_mux([Route("any", Match(protocol="tcpmux"), catch_all),
                    Route("rest", Match(default=True), RecordingTarget())], b"whatever\r\nhi")
    assert fed.written == b"+\r\n"
    assert catch_all.received == b"hi"


def test_named_route_wins_over_default_and_unknown_names_fall_through() -> None:
    echo = RecordingTarget(accept="")
    rest = RecordingTarget()
    routes = [Route("echo", Match(protocol="tcpmux", service="echo"), echo),
              Route("rest", Match(default=True), rest)]
    assert feed_mux(routes, b"ECHO\r\n").written == b"+\r\n"
    assert feed_mux(routes, b"nosuch\r\n").written == b""
    assert rest.received == b"nosuch\r\n"


def test_without_default_an_unknown_name_is_a_minus_line() -> None:
    fed = feed_mux([], b"nosuch\r\n")
    assert fed.written == b"-unknown service 'nosuch'\r\n"
    assert fed.closed
