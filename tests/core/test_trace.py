"""The "why this route" trace: Match.explain, the Trace text, and the live debug-level trace."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from portmux.core.mux import Multiplexer, SniffSettings
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route, Router, parse_networks
from portmux.core.trace import explain
from portmux.protocols import all_probes
from portmux.targets.proxy import ProxyTarget
from portmux.testing import RecordingTarget, feed_mux
from tests.protocols.helpers import fixture
from tests.targets.test_tls_support import in_thread, reactor, site_root, wait_closed

HTTP = Preamble(protocol="http", host="a.example", path="/app/x", alpn=("http/1.1",))
GET = b"GET /app/x HTTP/1.1\r\nHost: b.example\r\n\r\n"


class MatchExplainTests(SynchronousTestCase):
    """``Match.explain``: None when the match accepts, else its first rejecting key."""

    def test_first_failing_key_in_key_order(self) -> None:
        self.assertIsNone(Match(protocol="http", host="a.example").explain(HTTP))
        self.assertEqual(Match(protocol="tls", host="b.example").explain(HTTP), "protocol")
        self.assertEqual(Match(protocol="http", host="b.example", path="/x/").explain(HTTP), "host")
        self.assertEqual(Match(path="/x/").explain(HTTP), "path")
        self.assertEqual(Match(alpn="h2").explain(HTTP), "alpn")
        self.assertEqual(Match(level=0).explain(HTTP), "level")
        match = Match(protocol="http", network=parse_networks(["127.128.0.0/9"]))
        self.assertEqual(match.explain(HTTP, "127.0.0.1"), "network")
        self.assertIsNone(match.explain(HTTP, "127.137.9.9"))

    def test_agrees_with_accepts(self) -> None:
        matches = [Match(), Match(protocol="http"), Match(host="*.example"), Match(via="net.tcp://+/a/"),
                   Match(service="echo"), Match(sni="a.example"), Match(default=True), Match(silent=True)]
        for match in matches:
            self.assertEqual(match.explain(HTTP, "127.0.0.1") is None, match.accepts(HTTP, "127.0.0.1"), match)


class TraceTests(SynchronousTestCase):
    """The trace's routes, reasons and choice agree with the Router."""

    def routes(self) -> list[Route]:
        target = RecordingTarget()
        return [
            Route("web", Match(protocol="http", host="a.example"), target),
            Route("lan", Match(protocol="http", network=parse_networks(["127.128.0.0/9"])), target),
            Route("quiet", Match(silent=True), target),
            Route("rest", Match(default=True, network=parse_networks(["127.0.0.0/16"])), target),
        ]

    def test_default_taken_when_nothing_else_matches(self) -> None:
        router = Router(self.routes())
        trace = explain(all_probes(), router, GET, "127.0.0.1")
        self.assertIs(trace.chosen, router.select(trace.preamble, "127.0.0.1"))  # type: ignore[arg-type]
        text = [" ".join(line.split()) for line in trace.lines()]
        self.assertIn("1 web no: host (wants a.example, has b.example)", text)
        self.assertIn("2 lan no: network (wants 127.128.0.0/9, has 127.0.0.1)", text)
        self.assertIn("3 quiet silent: only for connections that send nothing", text)
        self.assertIn("4 rest default: only when no other route matches", text)
        self.assertTrue(text[-1].startswith("chosen: rest -> "), text[-1])

    def test_refused_default_network_and_refusal_bytes(self) -> None:
        trace = explain(all_probes(), Router(self.routes()), GET, "127.64.2.1")
        self.assertIsNone(trace.chosen)
        text = [" ".join(line.split()) for line in trace.lines()]
        self.assertIn("4 rest no: network (default route; has 127.64.2.1)", text)
        self.assertTrue(text[-1].startswith("chosen: none: no route for http b.example; refused with b'HTTP/1.1 404"))

    def test_a_bad_preamble_gets_no_route(self) -> None:
        bad_version = b"\x00\x02\x00\x01\x02\x02\x0bnet.tcp://a"
        trace = explain(all_probes(), Router(self.routes()), bad_version, "127.0.0.1")
        assert trace.preamble is not None
        self.assertEqual(trace.preamble.error, "UnsupportedVersion")
        self.assertIsNone(trace.chosen)
        self.assertIn("no: the preamble is refused (UnsupportedVersion)", "\n".join(trace.lines()))
        self.assertIn("faults/UnsupportedVersion", trace.lines()[-1])

    def test_via_index_wins_over_order(self) -> None:
        target = RecordingTarget()
        router = Router([Route("wide", Match(via="net.tcp://+/"), target),
                         Route("orders", Match(via="net.tcp://+/orders/"), target)])
        trace = explain(all_probes(), router, fixture("nmf/mono-streamed.bin"))
        assert trace.chosen is not None
        self.assertEqual(trace.chosen.name, "orders")
        self.assertIn("the Via index", trace.lines()[-1])
        self.assertEqual([a.failed for a in trace.answers], [None, None])


class LiveTraceTests(TestCase):
    """``[sniff] trace``: a traced client's routing is logged at debug level, others' are not."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def traces(self) -> list[str]:
        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == "portmux.trace" and e.get("log_level") is LogLevel.debug]

    def test_in_memory_traced_and_not(self) -> None:
        routes = [Route("web", Match(protocol="http", host="a.example"), RecordingTarget())]
        for networks, expected in ((("127.128.0.0/9",), 0), ((), 0), (("127.0.0.0/16",), 1)):
            mux = Multiplexer(reactor, routes, settings=SniffSettings(trace=parse_networks(networks)))
            feed_mux(mux, GET)
            self.assertEqual(len(self.traces()), expected, networks)
        (text,) = self.traces()
        self.assertIn("why this route for 127.0.0.1:40000:", text)
        self.assertIn("no: host (wants a.example, has b.example)", text)
        self.assertIn("chosen: none: no route for http b.example", text)

    @defer.inlineCallbacks
    def test_curl_through_a_listening_port(self) -> Any:
        """A real client (curl) on a real port: the trace names the route it was proxied by."""
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        backend = reactor.listenTCP(0, Site(site_root(b"traced\n")), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend.getHost().port}"])
        settings = SniffSettings(trace=(ipaddress.ip_network("127.0.0.1/32"),))
        mux = Multiplexer(reactor, [Route("web", Match(protocol="http", host="a.example"), target)],
                          settings=settings)
        port = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        done = yield in_thread(subprocess.run, [
            "curl", "-s", "--max-time", "10", "-H", "Host: a.example",
            f"http://127.0.0.1:{port.getHost().port}/"], capture_output=True, timeout=30, check=False)
        yield wait_closed(mux, "web")
        self.assertEqual(done.stdout, b"traced\n")
        (text,) = self.traces()
        self.assertIn("   3 http      match", text)
        self.assertIn("preamble: http method=GET target=/ path=/ host=a.example", text)
        self.assertIn("chosen: web -> proxy to tcp:127.0.0.1:", text)
