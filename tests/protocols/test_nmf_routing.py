"""net.tcp Via routing (strong/exact/weak, longest prefix) and framing Fault refusals."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from portmux.core import refusal
from portmux.core.mux import Multiplexer
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route, Router
from portmux.protocols import refusal_bytes
from portmux.protocols.nmf import (
    FAULT_NAMESPACE,
    ViaIndex,
    fault_record,
    parse_base_address,
    refusal_fault,
    via_matches,
)
from portmux.testing import RecordingTarget, feed_mux

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
reactor: Any = global_reactor


def preamble_bytes(via: str, major: int = 1, mode: int = 2) -> bytes:
    uri = via.encode()
    return bytes([0, major, 0, 1, mode, 2, len(uri)]) + uri + b"\x03\x08\x0c"


# -- base addresses and Via matching -------------------------------------------


def test_parse_base_address_ranks() -> None:
    assert parse_base_address("net.tcp://+/orders/").rank == 0
    assert parse_base_address("net.tcp://Host.Example/orders/").rank == 1
    assert parse_base_address("net.tcp://*:808/").rank == 2
    base = parse_base_address("NET.TCP://Host.Example:9000/Orders/")
    assert (base.scheme, base.host, base.port, base.path) == (
        "net.tcp", "host.example", 9000, "/orders"
    )
    for bad in ("orders", "net.tcp:///x", "net.tcp://h:99999/"):
        with pytest.raises(ValueError):
            parse_base_address(bad)


@pytest.mark.parametrize(
    ("base", "via", "expected"),
    [
        ("net.tcp://+/orders/", "net.tcp://anything.example/orders/Service.svc", True),
        ("net.tcp://+/orders/", "net.tcp://h/orders", True),
        ("net.tcp://+/orders/", "net.tcp://h/ordersx", False),
        ("net.tcp://+/orders/", "net.tcp://h/", False),
        ("net.tcp://+/", "net.tcp://h/anything", True),
        ("net.tcp://host.example/orders/", "net.tcp://HOST.example/ORDERS/x", True),
        ("net.tcp://host.example/orders/", "net.tcp://other.example/orders/x", False),
        ("net.tcp://*/orders/", "net.tcp://other.example/orders/x", True),
        ("net.tcp://+:808/a/", "net.tcp://h/a/", True),  # 808 is net.tcp's default port
        ("net.tcp://+:808/a/", "net.tcp://h:9000/a/", False),
        ("net.tcp://+/a/", "net.tcp://h:9000/a/", True),  # no port: any port
        ("net.tcp://+/a/", "net.pipe://h/a/", False),
        ("net.tcp://+/a/", "not a uri", False),
        ("net.tcp://+/a/", None, False),
    ],
)
def test_via_matches(base: str, via: str | None, expected: bool) -> None:
    assert via_matches(base, via) is expected


def test_index_precedence_strong_exact_weak_then_longest() -> None:
    index = ViaIndex(
        [
            ("net.tcp://*/", "weak-root"),
            ("net.tcp://*/a/b/", "weak-ab"),
            ("net.tcp://host/a/", "exact-a"),
            ("net.tcp://host/a/b/", "exact-ab"),
            ("net.tcp://+/a/", "strong-a"),
        ]
    )
    assert list(index.lookup("net.tcp://host/a/b/c")) == [
        "strong-a", "exact-ab", "exact-a", "weak-ab", "weak-root",
    ]
    assert list(index.lookup("net.tcp://other/a/b/c")) == ["strong-a", "weak-ab", "weak-root"]
    assert list(index.lookup("net.tcp://host/z")) == ["weak-root"]
    assert list(index.lookup("garbage")) == []


def nmf_route(name: str, via: str, **match: Any) -> Route:
    return Route(name, Match(protocol="nmf", via=via, **match), object())


def select(router: Router, via: str) -> str | None:
    route = router.select(Preamble(protocol="nmf", via=via, version="1.0", mode="duplex"))
    return None if route is None else route.name


def test_router_longest_prefix_regardless_of_order() -> None:
    router = Router(
        [
            nmf_route("root", "net.tcp://+/"),
            nmf_route("app", "net.tcp://+/app/"),
            nmf_route("app-v2", "net.tcp://+/app/v2/"),
        ]
    )
    assert select(router, "net.tcp://h/app/v2/svc") == "app-v2"
    assert select(router, "net.tcp://h/app/v1/svc") == "app"
    assert select(router, "net.tcp://h/other") == "root"


def test_router_strong_beats_exact_beats_weak() -> None:
    router = Router(
        [
            nmf_route("weak", "net.tcp://*/app/deeper/"),
            nmf_route("exact", "net.tcp://a.example/app/"),
            nmf_route("strong", "net.tcp://+/app/only/"),
        ]
    )
    assert select(router, "net.tcp://a.example/app/only/x") == "strong"
    assert select(router, "net.tcp://a.example/app/deeper/x") == "exact"
    assert select(router, "net.tcp://b.example/app/deeper/x") == "weak"
    assert select(router, "net.tcp://b.example/app/x") is None


def test_router_via_routes_before_protocol_catch_all_and_other_fields_apply() -> None:
    lan = Match(protocol="nmf", via="net.tcp://+/app/", network=())
    router = Router(
        [
            Route("catch-all", Match(protocol="nmf"), object()),
            Route("app", lan, object()),
        ]
    )
    assert select(router, "net.tcp://h/app/x") == "app"
    assert select(router, "net.tcp://h/else") == "catch-all"


def test_router_refuses_preambles_with_errors_even_with_a_default() -> None:
    router = Router(
        [
            Route("catch-all", Match(protocol="nmf"), object()),
            Route("default", Match(default=True), object()),
        ]
    )
    bad = Preamble(protocol="nmf", version="2.0", error="UnsupportedVersion")
    assert router.select(bad) is None
    assert router.refusal_reason(bad) == "nmf preamble refused: UnsupportedVersion"


# -- fault records ---------------------------------------------------------------


def test_fault_record_bytes() -> None:
    uri = b"http://schemas.microsoft.com/ws/2006/05/framing/faults/EndpointNotFound"
    assert fault_record("EndpointNotFound") == b"\x08" + bytes([len(uri)]) + uri
    assert FAULT_NAMESPACE.encode() + b"EndpointNotFound" == uri
    assert fault_record("urn:x:custom") == b"\x08\x0curn:x:custom"
    long_uri = "urn:" + "x" * 200
    assert fault_record(long_uri)[:3] == b"\x08\xcc\x01"
    with pytest.raises(ValueError):
        fault_record("")


@pytest.mark.parametrize(
    ("preamble", "status", "fault"),
    [
        (Preamble(protocol="nmf", via="net.tcp://h/"), refusal.NOT_FOUND, "EndpointNotFound"),
        (Preamble(protocol="nmf", via="net.tcp://h/"), refusal.UNAVAILABLE, "EndpointUnavailable"),
        (Preamble(protocol="nmf", via="net.tcp://h/"), refusal.BAD_GATEWAY,
         "ServiceActivationFailed"),
        (Preamble(protocol="nmf"), refusal.TIMEOUT, "ServerTooBusy"),
        (Preamble(protocol="nmf"), refusal.TOO_LARGE, "EndpointNotFound"),
        (Preamble(protocol="nmf", error="UnsupportedVersion"), refusal.NOT_FOUND,
         "UnsupportedVersion"),
        (Preamble(protocol="nmf", error="UnsupportedMode"), refusal.NOT_FOUND, "UnsupportedMode"),
        (Preamble(protocol="nmf", error="MalformedVia"), refusal.NOT_FOUND, "EndpointNotFound"),
        (Preamble(protocol="nmf", error="ViaTooLong"), refusal.NOT_FOUND, "EndpointNotFound"),
    ],
)
def test_refusal_fault_choice(preamble: Preamble, status: int, fault: str) -> None:
    assert refusal_fault(preamble, status) == fault
    assert refusal_bytes(preamble, status, "why") == fault_record(fault)


# -- on the wire, in memory ------------------------------------------------------


def fault_bytes(name: str) -> bytes:
    uri = (FAULT_NAMESPACE + name).encode()
    return b"\x08" + bytes([len(uri)]) + uri


class Refusing:
    kind = "refusing"
    description = "refuses"

    def __init__(self, status: int) -> None:
        self.status = status

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def attach(self, connection: Any) -> None:
        connection.refuse(self.status, "backend down")


def exchange(routes: list[Route], data: bytes) -> StringTransport:
    return feed_mux(routes, data).transport


def app_routes(target: Any) -> list[Route]:
    return [Route("app", Match(protocol="nmf", via="net.tcp://+/app/"), target)]


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (preamble_bytes("net.tcp://h/nowhere/"), "EndpointNotFound"),
        (preamble_bytes("net.tcp://h/app/", major=2), "UnsupportedVersion"),
        (preamble_bytes("net.tcp://h/app/", mode=9), "UnsupportedMode"),
        (b"\x00\x01\x00\x01\x02\x02\x03\xff\xfe\xfd", "EndpointNotFound"),
        (b"\x00\x01\x00\x01\x02\x02\x00", "EndpointNotFound"),
    ],
    ids=["unknown-via", "version", "mode", "bad-utf8-via", "empty-via"],
)
def test_wire_refusals(data: bytes, fault: str) -> None:
    target = RecordingTarget(accept="")
    transport = exchange(app_routes(target), data)
    assert transport.value() == fault_bytes(fault)
    assert transport.disconnecting
    assert target.connections == []


@pytest.mark.parametrize(
    ("status", "fault"),
    [(refusal.UNAVAILABLE, "EndpointUnavailable"), (refusal.BAD_GATEWAY, "ServiceActivationFailed")],
)
def test_wire_backend_refusals(status: int, fault: str) -> None:
    transport = exchange(app_routes(Refusing(status)), preamble_bytes("net.tcp://h/app/svc"))
    assert transport.value() == fault_bytes(fault)
    assert transport.disconnecting


def test_wire_match_replays_the_whole_preamble_and_sends_nothing() -> None:
    target = RecordingTarget(accept="")
    data = preamble_bytes("net.tcp://h/app/svc") + b"\x06\x05hello"
    transport = exchange(app_routes(target), data)
    assert transport.value() == b""
    assert not transport.disconnecting
    [connection] = target.connections
    assert connection.preamble.via == "net.tcp://h/app/svc"
    assert connection.preamble.consumed == 0
    assert connection.payload == data


# -- on the wire, real sockets and a proxied backend ------------------------------


class Backend(Protocol):
    def __init__(self, received: Deferred[bytes], expected: int) -> None:
        self.received = received
        self.expected = expected
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected and not self.received.called:
            self.transport.write(b"\x0b")  # type: ignore[union-attr]  # PreambleAck
            self.received.callback(self.data)


class Client(Protocol):
    def __init__(self, answer: Deferred[bytes]) -> None:
        self.answer = answer
        self.closed: Deferred[bytes] = Deferred()
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.answer.called:
            self.answer.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answer.called:
            self.answer.callback(self.data)
        self.closed.callback(self.data)


class ProxiedTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_backend_sees_exactly_the_clients_bytes_and_unknown_via_gets_a_fault(self) -> Any:
        from portmux.targets.proxy import ProxyTarget

        data = preamble_bytes("net.tcp://localhost/app/Service.svc")
        received: Deferred[bytes] = Deferred()
        backend = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Backend(received, len(data)))
        )
        self.addCleanup(backend.stopListening)
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend.getHost().port}"])
        mux = Multiplexer(reactor, app_routes(target))
        port = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        answer: Deferred[bytes] = Deferred()
        client = yield endpoint.connect(Factory.forProtocol(lambda: Client(answer)))
        client.transport.write(data)
        seen = yield received
        self.assertEqual(seen, data)
        self.assertEqual((yield answer), b"\x0b")
        closed_client = client.closed
        client.transport.loseConnection()

        other = yield endpoint.connect(Factory.forProtocol(lambda: Client(Deferred())))
        other.transport.write(preamble_bytes("net.tcp://localhost/elsewhere/"))
        got = yield other.closed
        self.assertEqual(got, fault_bytes("EndpointNotFound"))
        yield closed_client
