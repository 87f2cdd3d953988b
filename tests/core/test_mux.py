"""The sniffing state machine: probe order, deadlines, limits, refusals, attach."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmux.core.mux import Multiplexer, SniffSettings
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.core.routing import Match, Route, Router
from portmux.protocols.base import FunctionProbe
from portmux.targets.factory import FactoryTarget
from portmux.targets.help import HelpTarget
from portmux.testing import RecordingProtocol, RecordingTarget

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def prefix_probe(name: str, magic: bytes) -> FunctionProbe:
    """A probe that matches data starting with ``magic``."""

    def probe(data: bytes) -> ProbeResult:
        if data.startswith(magic):
            return Preamble(protocol=name)
        if magic.startswith(data):
            return NEED_MORE
        return NO

    return FunctionProbe(name, probe)


class MuxTestCase(SynchronousTestCase):
    def make(self, routes: list[Route], probes: Any = None, **settings: Any) -> Any:
        self.clock = MemoryReactorClock()
        self.mux = Multiplexer(self.clock, routes, probes=probes, settings=SniffSettings(**settings))
        self.mux.startFactory()
        protocol = self.mux.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(self.transport)
        return protocol


class ClassifyTests(MuxTestCase):
    def test_http_request_reaches_its_target_whole(self) -> None:
        target = RecordingTarget()
        protocol = self.make([Route("web", Match(protocol="http"), target)])
        request = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
        protocol.dataReceived(request)
        self.assertEqual(target.protocols[0].data, request)
        self.assertEqual(target.connections[0].preamble.host, "a.example")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # deadline cancelled

    def test_request_split_at_every_offset_is_routed_the_same(self) -> None:
        request = b"GET /x HTTP/1.1\r\nHost: B.example:8080\r\n\r\nbody"
        for cut in range(1, len(request)):
            target = RecordingTarget()
            protocol = self.make([Route("web", Match(protocol="http", host="b.example"), target)])
            protocol.dataReceived(request[:cut])
            protocol.dataReceived(request[cut:])
            self.assertEqual(target.protocols[0].data, request, cut)

    def test_later_probe_waits_for_earlier_undecided_probe(self) -> None:
        first, second = RecordingTarget(), RecordingTarget()
        probes = [prefix_probe("long", b"ABCDEF"), prefix_probe("short", b"ABC")]
        protocol = self.make(
            [Route("long", Match(protocol="long"), first),
             Route("short", Match(protocol="short"), second)], probes=probes)
        protocol.dataReceived(b"ABCD")
        self.assertEqual((first.connections, second.connections), ([], []))
        protocol.dataReceived(b"EF")
        self.assertEqual(len(first.connections), 1)

    def test_undecided_earlier_probe_yields_at_end_of_stream(self) -> None:
        second = RecordingTarget()
        probes = [prefix_probe("long", b"ABCDEF"), prefix_probe("short", b"ABC")]
        protocol = self.make([Route("short", Match(protocol="short"), second)], probes=probes)
        protocol.dataReceived(b"ABCD")
        protocol.readConnectionLost()
        self.assertEqual(second.protocols[0].data, b"ABCD")

    def test_data_after_attach_goes_straight_to_the_target(self) -> None:
        target = RecordingTarget()
        protocol = self.make([Route("ssh", Match(protocol="ssh"), target)])
        protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
        protocol.dataReceived(b"more")
        self.assertEqual(target.protocols[0].data, b"SSH-2.0-OpenSSH_9.2\r\nmore")
        protocol.connectionLost(None)
        self.assertTrue(target.protocols[0].lost)
        counters = self.mux.stats.routes["ssh"]
        self.assertEqual((counters.connections, counters.active), (1, 0))

    def test_tcpmux_line_is_consumed_and_answered(self) -> None:
        echo = Factory.forProtocol(RecordingProtocol)
        protocol = self.make([Route("echo", Match(protocol="tcpmux", service="echo"),
                                    FactoryTarget(echo))])
        protocol.dataReceived(b"ECHO\r\nhello")
        self.assertEqual(self.transport.value(), b"+\r\n")

    def test_help_lists_service_names(self) -> None:
        echo = FactoryTarget(Factory.forProtocol(RecordingProtocol))
        protocol = self.make([
            Route("echo", Match(protocol="tcpmux", service="echo"), echo),
            Route("date", Match(protocol="tcpmux", service="Date"), echo),
            Route("help", Match(protocol="tcpmux", service="help"), HelpTarget()),
        ])
        protocol.dataReceived(b"HELP\r\n")
        self.assertEqual(self.transport.value(), b"date\r\necho\r\n")
        self.assertTrue(self.transport.disconnecting)


class RefusalTests(MuxTestCase):
    def test_no_route_for_http_is_a_404(self) -> None:
        protocol = self.make([])
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertIn(b"no route for http nowhere", self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.mux.stats.refusals["no_route"], 1)

    def test_no_route_for_tcpmux_is_a_minus_line(self) -> None:
        protocol = self.make([])
        protocol.dataReceived(b"nosuch\r\n")
        self.assertEqual(self.transport.value(), b"-unknown service 'nosuch'\r\n")

    def test_unknown_protocol_is_closed_cleanly(self) -> None:
        protocol = self.make([])
        protocol.dataReceived(b"\x01\x02\x03 binary")
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)

    def test_unknown_protocol_goes_to_the_default_route(self) -> None:
        target = RecordingTarget()
        protocol = self.make([Route("rest", Match(default=True), target)])
        protocol.dataReceived(b"\x01\x02\x03 binary")
        self.assertEqual(target.protocols[0].data, b"\x01\x02\x03 binary")
        self.assertEqual(target.connections[0].preamble.protocol, "unknown")

    def test_oversized_http_headers_get_431(self) -> None:
        protocol = self.make([], preamble_max_bytes=1024)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        protocol.dataReceived(b"X-Long: " + b"a" * 2000)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(self.transport.disconnecting)

    def test_bytes_after_a_refusal_are_dropped_not_classified_again(self) -> None:
        target = RecordingTarget()
        protocol = self.make([Route("rest", Match(default=True), target)],
                             preamble_max_bytes=1024)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 2000)
        protocol.dataReceived(b"b" * 5000)
        protocol.readConnectionLost()
        self.assertEqual(self.mux.stats.refusals["preamble_too_large"], 1)
        self.assertEqual(sum(self.mux.stats.refusals.values()), 1)
        self.assertEqual(target.connections, [])
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 431 "), 1)

    def test_preamble_timeout_refuses(self) -> None:
        protocol = self.make([], preamble_timeout=5.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(self.transport.disconnecting)

    def test_silence_then_nothing_times_out_without_silent_route(self) -> None:
        self.make([], preamble_timeout=3.0, silence_timeout=1.0)
        self.clock.advance(3.1)
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.mux.stats.sniffing, 0)

    def test_timeout_with_partial_preamble_leaves_the_sniffing_gauge(self) -> None:
        protocol = self.make([], preamble_timeout=2.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.mux.stats.sniffing, 1)
        self.clock.advance(2.5)
        protocol.connectionLost(None)
        self.assertEqual(self.mux.stats.sniffing, 0)

    def test_attach_failure_is_a_502(self) -> None:
        class Broken(RecordingTarget):
            def attach(self, connection: Any) -> RecordingProtocol:
                raise RuntimeError("boom")

        protocol = self.make([Route("web", Match(protocol="http"), Broken())])
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 502 "))
        self.flushLoggedErrors(RuntimeError)

    def test_client_closing_while_sniffing_cancels_the_deadline(self) -> None:
        protocol = self.make([])
        protocol.dataReceived(b"GET / HT")
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.mux.stats.sniffing, 0)


class SharedDeadlineTests(MuxTestCase):
    """Sniffing connections share one timer per delay, yet each keeps its own deadline."""

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.mux.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_many_connections_one_timer_each_own_deadline(self) -> None:
        self.make([], preamble_timeout=5.0)
        first = self.transport
        others = []
        for _ in range(20):
            self.clock.advance(0.1)
            others.append(self.connect()[1])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3.0)  # the first connection's deadline
        self.assertTrue(first.disconnecting)
        self.assertFalse(others[0].disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(others[0].disconnecting)
        self.assertFalse(others[1].disconnecting)
        self.clock.advance(5.0)
        self.assertTrue(all(t.disconnecting for t in others))
        self.assertEqual(self.mux.stats.sniffing, 0)
        self.clock.advance(10.0)  # 21 refusals: the rate-limited log's summary timer fires
        self.assertEqual(self.mux.log.suppressed_total, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_classified_connections_leave_the_queue(self) -> None:
        target = RecordingTarget()
        self.make([Route("web", Match(protocol="http"), target)], preamble_timeout=5.0)
        protocols = [self.connect() for _ in range(10)]
        for protocol, _ in protocols:
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(5.0)  # only the first, silent one times out
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(any(t.disconnecting for _, t in protocols))
        self.assertEqual(len(target.connections), 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_new_settings_apply_to_new_connections_only(self) -> None:
        self.make([], preamble_timeout=10.0)
        old = self.transport
        self.mux.settings = SniffSettings(preamble_timeout=2.0)
        _, new = self.connect()
        self.clock.advance(2.0)
        self.assertTrue(new.disconnecting)
        self.assertFalse(old.disconnecting)
        self.clock.advance(8.0)
        self.assertTrue(old.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SilentRouteTests(MuxTestCase):
    def test_silent_connection_goes_to_the_silent_route(self) -> None:
        target = RecordingTarget()
        self.make([Route("smtp", Match(silent=True), target)], silence_timeout=2.0)
        self.clock.advance(2.0)
        self.assertEqual(self.mux.stats.sniffing, 0)
        self.assertEqual(target.connections[0].preamble.protocol, "silent")
        self.assertEqual(target.protocols[0].data, b"")

    def test_talking_connection_is_not_silent(self) -> None:
        target, web = RecordingTarget(), RecordingTarget()
        protocol = self.make([Route("smtp", Match(silent=True), target),
                              Route("web", Match(protocol="http"), web)], silence_timeout=2.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(2.5)
        self.assertEqual(target.connections, [])
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(len(web.connections), 1)


class RouterSwapTests(MuxTestCase):
    def test_swap_starts_new_and_stops_unused_targets(self) -> None:
        old, new = RecordingTarget(), RecordingTarget()
        self.make([Route("a", Match(protocol="http"), old)])
        self.assertEqual(old.started, 1)
        self.mux.set_static_routes([Route("b", Match(protocol="http"), new)])
        self.assertEqual((new.started, old.stopped), (1, 1))
        self.mux.stopFactory()
        self.assertEqual(new.stopped, 1)

    def test_registered_routes_come_before_static_ones(self) -> None:
        static, worker = RecordingTarget(), RecordingTarget()
        self.make([Route("static", Match(protocol="http"), static)])
        self.mux.set_registered_routes([Route("w", Match(protocol="http", host="w"), worker)])
        names = [r.name for r in self.mux.router.routes]
        self.assertEqual(names, ["w", "static"])
        self.assertIsInstance(self.mux.router, Router)


class ProxyHeaderTests(SynchronousTestCase):
    def make(self, trusted: list[str]) -> Any:
        from portmux.core.routing import parse_networks

        self.clock = MemoryReactorClock()
        self.target = RecordingTarget()
        mux = Multiplexer(self.clock, [Route("web", Match(protocol="http"), self.target)])
        self.mux = mux
        factory = mux.listener_factory(parse_networks(trusted))
        factory.doStart()
        protocol = factory.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(self.transport)
        return protocol

    def test_trusted_peer_header_sets_the_real_peer_and_is_stripped(self) -> None:
        protocol = self.make(["127.0.0.0/8"])
        data = b"PROXY TCP4 127.64.2.7 127.0.0.1 5555 443\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
        for cut in (3, 20, 45):
            protocol = self.make(["127.0.0.0/8"])
            protocol.dataReceived(data[:cut])
            protocol.dataReceived(data[cut:])
            connection = self.target.connections[-1]
            self.assertEqual((connection.peer.host, connection.peer.port), ("127.64.2.7", 5555))
            self.assertEqual(self.target.protocols[-1].data, data[data.index(b"GET"):])

    def test_v2_header(self) -> None:
        from twisted.internet.address import IPv4Address as Address

        from portmux.protocols.proxyheader import v2_header

        header = v2_header(Address("TCP", "127.51.100.1", 1000), Address("TCP", "127.0.0.1", 443))
        protocol = self.make(["127.0.0.1/32"])
        protocol.dataReceived(header + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.target.connections[0].peer.host, "127.51.100.1")

    def test_trusted_peer_without_header_gets_refused(self) -> None:
        protocol = self.make(["127.0.0.0/8"])
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.target.connections, [])
        self.assertTrue(self.transport.disconnecting)

    def test_untrusted_peer_is_sniffed_normally_and_cannot_claim_an_address(self) -> None:
        protocol = self.make(["127.128.0.0/9"])
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.target.connections[0].peer.host, "127.0.0.1")


class SilentFloodTests(TestCase):
    """Real sockets: a flood of connections that never speak is cut off on time, leak-free."""

    timeout = 30

    async def test_silent_flood_is_refused_on_deadline(self) -> None:
        from twisted.internet import reactor

        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=0.5))
        port = reactor.listenTCP(0, mux, backlog=512, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)
        clients = []
        for _ in range(200):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(address)
            clients.append(client)
        self.addCleanup(lambda: [c.close() for c in clients])
        waited = 0.0
        while mux.stats.accepted < 200 or mux.stats.sniffing:
            await task.deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
            self.assertLess(waited, 10, f"sniffing={mux.stats.sniffing}")
        self.assertEqual(mux.stats.refusals["preamble_timeout"], 200)
        # Every client sees the server's close (EOF), nothing else.  The closes finish
        # in the reactor's next turns, so poll without blocking it.
        open_clients = list(clients)
        while open_clients:
            still_open = []
            for client in open_clients:
                try:
                    self.assertEqual(client.recv(10), b"")
                except BlockingIOError:
                    still_open.append(client)
            open_clients = still_open
            if open_clients:
                await task.deferLater(reactor, 0.05, lambda: None)
                waited += 0.05
                self.assertLess(waited, 10, f"{len(open_clients)} clients never saw EOF")
        self.assertEqual(len(mux._deadlines[0.5]), 0)
