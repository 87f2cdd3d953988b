"""Worker-side helpers and the twistd portmux-worker options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.application.strports import service as strports_service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python import usage

from portmux.targets.echo import EchoFactory
from portmux.worker._library import Handoff, _Adopting, control_path, parse_address_text
from portmux.worker.tap import Options, load_factory, take_factory


def test_match_text() -> None:
    assert parse_address_text("protocol=http,host=*,path=/app/") == {
        "protocol": "http", "host": "*", "path": "/app/"}
    assert parse_address_text("service=alice:echo/2") == {"service": "alice:echo/2"}
    assert parse_address_text("via=net.tcp://+/app/,network=127.128.0.0/9,network=::1") == {
        "via": "net.tcp://+/app/", "network": ["127.128.0.0/9", "::1"]}
    for bad in ("protocol=http,bogus=1", "host=a,host=b", "host=a,path"):
        with pytest.raises(ValueError):
            parse_address_text(bad)


def test_protocol_1_address_text_becomes_match_keys() -> None:
    assert parse_address_text("tcpmux:alice:echo/2") == {"protocol": "tcpmux", "service": "alice:echo/2"}
    assert parse_address_text("http:example.com/api") == {
        "protocol": "http", "host": "example.com", "path": "/api"}
    assert parse_address_text("http:") == {"protocol": "http", "host": "*", "path": "/"}
    assert parse_address_text("tls:a.example") == {"protocol": "tls", "sni": "a.example"}
    assert parse_address_text("net.tcp://+/app/") == {"protocol": "nmf", "via": "net.tcp://+/app/"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_address_text("gopher:x")


def test_control_path_and_handoff_facts() -> None:
    assert control_path("unix:/run/p.sock") == "/run/p.sock"
    assert control_path("unix:path=/run/p.sock:lockfile=0") == "/run/p.sock"
    assert control_path("/run/p.sock") == "/run/p.sock"
    info = Handoff({"route": "r", "data": "aGk=", "greeting": "KwoN",
                    "peer": {"type": "TCP", "host": "::1", "port": 7}, "preamble": {"protocol": "x"}})
    assert (info.data, info.route, info.preamble) == (b"hi", "r", {"protocol": "x"})
    assert info.peer == IPv6Address("TCP", "::1", 7)


def test_adopted_transport_reports_the_peer_portmux_saw() -> None:
    """Behind a trusted PROXY header the socket's peer is the balancer; the protocol sees the client."""
    info = Handoff({"route": "r", "data": "", "greeting": "",
                    "peer": {"type": "TCP", "host": "127.64.2.7", "port": 4000}})
    adopting = _Adopting(Factory.forProtocol(Protocol), info)
    protocol = adopting.buildProtocol(IPv4Address("TCP", "127.128.0.5", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.128.0.5", 5000))
    protocol.makeConnection(transport)
    assert protocol.transport.getPeer() == IPv4Address("TCP", "127.64.2.7", 4000)


def test_options_validate() -> None:
    options = Options()
    options.parseOptions(["--control", "unix:/x", "--match", "protocol=tcpmux,service=e",
                          "--address", "tcpmux:old", "--factory", "portmux.targets.echo:EchoFactory"])
    assert options["matches"] == [{"protocol": "tcpmux", "service": "e"},
                                  {"protocol": "tcpmux", "service": "old"}]
    for argv in (["--match", "service=e", "--factory", "a:b"],
                 ["--control", "unix:/x", "--factory", "a:b"],
                 ["--control", "unix:/x", "--match", "service=e"],
                 ["--control", "unix:/x", "--address", "bogus:e", "--factory", "a:b"],
                 ["--control", "unix:/x", "--match", "servce=e", "--factory", "a:b"],
                 ["--control", "unix:/x", "--match", "service=e", "--mode", "x", "--factory", "a:b"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(argv)


def test_factory_loading_and_taking_a_plugins_server() -> None:
    assert isinstance(load_factory("portmux.targets.echo:EchoFactory"), EchoFactory)
    with pytest.raises(usage.UsageError):
        load_factory("portmux.targets.echo")
    top = MultiService()
    factory = EchoFactory()
    listener = strports_service("tcp:0:interface=127.0.0.1", factory)
    listener.setServiceParent(top)
    assert take_factory(top) is factory
    assert list(top) == []  # it will not listen on its own port


def test_twistd_lists_the_worker_plugin() -> None:
    twistd = str(Path(sys.executable).with_name("twistd"))
    out = subprocess.run([twistd, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert "portmux-worker" in out.stdout
