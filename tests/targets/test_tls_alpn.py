"""ALPN at termination, with curl and openssl s_client: no overlap is never alert 80."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.factory import FactoryTarget
from portmux.targets.proxy import ProxyTarget
from portmux.targets.resource import ResourceTarget
from portmux.targets.tls import TLSTarget, http_alpn_offer
from portmux.tls import CertificateStore, TLSSettings
from portmux.tls._alpn import select
from tests.targets.test_tls_support import (
    echo_factory,
    in_thread,
    make_pki,
    need,
    reactor,
    run,
    site_root,
    tls_exchange,
    wait_closed,
)


def site_route(name: str = "site", **match: Any) -> Route:
    return Route(name, Match(protocol="http", **match), ResourceTarget(site_root(b"site\n")))


class _Port(TestCase):
    """A termination port built from ``settings`` and ``routes()``."""

    settings = TLSSettings()

    def routes(self) -> list[Route]:
        return [site_route()]

    def setUp(self) -> None:
        self.pki = make_pki(Path(tempfile.mkdtemp()))
        store = CertificateStore([self.pki.directory], settings=self.settings)
        self.target = TLSTarget(reactor, store, self.routes())
        self.mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), self.target)])
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, self.mux, "https")
        self.port = port.getHost().port

    def curl(self, *args: str) -> Any:
        if need("curl"):
            self.skipTest(need("curl"))
        return in_thread(
            run,
            ["curl", "-sS", "--max-time", "8", "--cacert", str(self.pki.ca_file),
             "--resolve", f"a.example.com:{self.port}:127.0.0.1",
             "-w", "\n%{http_version}", *args, f"https://a.example.com:{self.port}/hello"],
        )

    def s_client(self, alpn: str | None, send: bytes = b"") -> Any:
        if need("openssl"):
            self.skipTest(need("openssl"))
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                   "-servername", "a.example.com", "-CAfile", str(self.pki.ca_file)]
        if alpn is not None:
            command += ["-alpn", alpn]
        return in_thread(run, command, send)


class AutomaticALPNTests(_Port):
    """No ``alpn`` configured and in-process HTTP inside: h2 and http/1.1 are negotiated."""

    @inlineCallbacks
    def test_curl_default_negotiates_h2(self) -> Any:
        result = yield self.curl()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"site\n\n2")

    @inlineCallbacks
    def test_curl_http1_and_no_alpn(self) -> Any:
        one = yield self.curl("--http1.1")
        self.assertEqual((one.returncode, one.stdout), (0, b"site\n\n1.1"), one.stderr)
        bare = yield self.curl("--no-alpn")
        self.assertEqual((bare.returncode, bare.stdout), (0, b"site\n\n1.1"), bare.stderr)

    @inlineCallbacks
    def test_s_client_with_no_common_protocol_completes_the_handshake(self) -> Any:
        result = yield self.s_client("x-unknown,y-other")
        out = (result.stdout + result.stderr).decode("latin-1")
        self.assertIn("No ALPN negotiated", out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertNotIn("alert number 80", out)
        self.assertNotIn("internal error", out)


class NoHTTPInsideTests(_Port):
    """Nothing in-process speaks HTTP inside: no ALPN, and ALPN-offering clients still connect."""

    def routes(self) -> list[Route]:
        return [Route("echo", Match(), FactoryTarget(echo_factory(b"echo:")))]

    @inlineCallbacks
    def test_s_client_offering_h2_gets_no_alpn(self) -> Any:
        result = yield self.s_client("h2,http/1.1")
        out = result.stdout.decode("latin-1")
        self.assertIn("No ALPN negotiated", out)
        self.assertIn("Verify return code: 0 (ok)", out)

    @inlineCallbacks
    def test_python_ssl_offering_alpn_reaches_the_echo(self) -> Any:
        result = yield in_thread(
            tls_exchange, self.port, "a.example.com", self.pki.ca_file, b"ping",
            alpn=("h2", "http/1.1"), read_until=b"ping",
        )
        self.assertIsNone(result.alpn)
        self.assertEqual(result.data, b"echo:ping")

    @inlineCallbacks
    def test_curl_offering_alpn_is_not_refused(self) -> Any:
        """curl's handshake completes: it then meets the echo, which is not HTTP."""
        result = yield self.curl("--http1.1")
        self.assertNotEqual(result.returncode, 35, result.stderr)  # CURLE_SSL_CONNECT_ERROR
        self.assertIn(b"HTTP/0.9", result.stderr)


class ConfiguredMismatchContinuesTests(_Port):
    """``alpn`` configured, no overlap, default policy: carry on without ALPN (as nginx)."""

    settings = TLSSettings(alpn=("x-custom",))

    @inlineCallbacks
    def test_curl_gets_http1_without_alpn(self) -> Any:
        result = yield self.curl()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"site\n\n1.1")

    @inlineCallbacks
    def test_s_client_overlap_still_negotiates(self) -> Any:
        result = yield self.s_client("h2,x-custom")
        self.assertIn("ALPN protocol: x-custom", result.stdout.decode("latin-1"))


class ConfiguredMismatchRefusedTests(_Port):
    """``alpn_mismatch = "refuse"``: RFC 7301's no_application_protocol (120), never 80."""

    settings = TLSSettings(alpn=("x-custom",), alpn_mismatch="refuse")

    @inlineCallbacks
    def test_s_client_gets_alert_120(self) -> Any:
        result = yield self.s_client("h2,http/1.1")
        self.assertNotEqual(result.returncode, 0)
        out = (result.stdout + result.stderr).decode("latin-1").lower()
        self.assertIn("no application protocol", out)
        self.assertIn("alert number 120", out)
        self.assertEqual(self.target.inner.stats.refusals["tls_handshake_failed"], 1)

    @inlineCallbacks
    def test_curl_is_refused_with_no_application_protocol(self) -> Any:
        result = yield self.curl()
        self.assertEqual(result.returncode, 35, result.stderr)  # CURLE_SSL_CONNECT_ERROR
        self.assertIn(b"no application protocol", result.stderr)

    @inlineCallbacks
    def test_client_without_alpn_is_served(self) -> Any:
        """A client offering no ALPN at all is no mismatch."""
        result = yield self.curl("--no-alpn")
        self.assertEqual((result.returncode, result.stdout), (0, b"site\n\n1.1"), result.stderr)


class OfferTests(TestCase):
    """Which ALPN ids the inner routes call for, per server name."""

    def test_server_preference_wins(self) -> None:
        self.assertEqual(select((b"h2", b"http/1.1"), [b"http/1.1", b"h2"]), b"h2")
        self.assertIsNone(select((b"h2",), [b"spdy/3"]))

    def test_resources_only_offer_h2_and_http1(self) -> None:
        self.assertEqual(http_alpn_offer([site_route()], "a.example.com", True), (b"h2", b"http/1.1"))
        self.assertEqual(http_alpn_offer([site_route()], None, False), (b"http/1.1",))

    def test_an_http_backend_beside_resources_keeps_http1_only(self) -> None:
        routes = [site_route(host="a.example.com"),
                  Route("api", Match(protocol="http"), ProxyTarget(["tcp:127.0.0.1:1"]))]
        self.assertEqual(http_alpn_offer(routes, "a.example.com", True), (b"http/1.1",))

    def test_per_server_name(self) -> None:
        """A name taken by a TLS-facts route gets no ALPN; other names get the site's."""
        routes = [Route("b", Match(sni="b.example.com"), ProxyTarget(["tcp:127.0.0.1:1"])),
                  site_route()]
        self.assertEqual(http_alpn_offer(routes, "b.example.com", True), ())
        self.assertEqual(http_alpn_offer(routes, "a.example.com", True), (b"h2", b"http/1.1"))

    def test_no_resources_no_alpn(self) -> None:
        routes = [Route("ssh", Match(protocol="ssh"), ProxyTarget(["tcp:127.0.0.1:1"]))]
        self.assertEqual(http_alpn_offer(routes, "a.example.com", True), ())
