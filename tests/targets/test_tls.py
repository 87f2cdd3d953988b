"""TLS termination on a shared port, verified with Python ssl, openssl s_client and curl."""

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
from portmux.targets.tls import TLSTarget
from portmux.tls import CertificateStore, TLSSettings
from tests.targets.test_tls_support import (
    echo_factory,
    in_thread,
    listen,
    make_pki,
    need,
    reactor,
    run,
    site_root,
    tls_exchange,
    wait_closed,
)


class Spy:
    """An inner target that records each connection's preamble, answers ``reply`` and closes."""

    kind = "spy"
    description = "spy"

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.seen: list[Any] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def attach(self, connection: Any) -> None:
        self.seen.append(connection.preamble)
        connection.transport.write(self.reply)
        connection.transport.loseConnection()


class TerminationTests(TestCase):
    """One port: TLS terminated, then three inner targets chosen by SNI/Host."""

    unknown_sni = "default"

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.pki = make_pki(self.tmp)
        backend = listen(echo_factory(b"backend-b:"))
        self.addCleanup(backend.stopListening)
        self.store = CertificateStore(
            [self.pki.directory],
            default_certificate=self.pki.default,
            settings=TLSSettings(alpn=("h2", "http/1.1", "x-custom"), unknown_sni=self.unknown_sni),
        )
        # Routes on TLS facts alone come first: they take the connection at handshake time.
        inner = [
            Route("b", Match(sni="b.example.com"), ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend.getHost().port}"])),
            Route("custom", Match(sni="*.wild.example.com", alpn="x-custom"), FactoryTarget(echo_factory(b"custom-alpn:"))),
            Route("wild", Match(sni="*.wild.example.com"), FactoryTarget(echo_factory(b"wild:"))),
            Route("site", Match(protocol="http", host="a.example.com"), ResourceTarget(site_root(b"site a\n"))),
            Route("default-site", Match(protocol="http", sni="default.example.com"), ResourceTarget(site_root(b"site default\n"))),
            Route("nosni", Match(protocol="http"), ResourceTarget(site_root(b"no name\n"))),
        ]
        self.target = TLSTarget(reactor, self.store, inner)
        self.mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), self.target)])
        port = listen(self.mux)
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, self.mux, "https")
        self.port = port.getHost().port

    def exchange(self, name: str | None, send: bytes, **kw: Any) -> Any:
        return in_thread(tls_exchange, self.port, name, self.pki.ca_file, send, **kw)

    @inlineCallbacks
    def test_three_targets_by_sni(self) -> Any:
        """a → in-process Resource, b → proxied plaintext backend, *.wild → factory."""
        a = yield self.exchange(
            "a.example.com", b"GET /hello HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(a.names, ("a.example.com",))
        self.assertTrue(a.data.startswith(b"HTTP/1.1 200"), a.data)
        self.assertTrue(a.data.endswith(b"site a\n"))
        b = yield self.exchange("b.example.com", b"ping", read_until=b"ping")
        self.assertEqual(b.names, ("b.example.com",))
        self.assertEqual(b.data, b"backend-b:ping")
        c = yield self.exchange("c.wild.example.com", b"hi", read_until=b"hi")
        self.assertEqual(c.names, ("*.wild.example.com",))
        self.assertEqual(c.data, b"wild:hi")
        self.assertEqual(self.target.inner.stats.routes["site"].connections, 1)
        self.assertEqual(self.target.inner.stats.routes["b"].connections, 1)
        self.assertEqual(self.target.inner.stats.routes["wild"].connections, 1)

    @inlineCallbacks
    def test_inner_route_matches_negotiated_alpn(self) -> Any:
        """The inner preamble carries the negotiated ALPN id, so routes can match it."""
        c = yield self.exchange("d.wild.example.com", b"hi", alpn=("x-custom",), read_until=b"hi")
        self.assertEqual(c.alpn, "x-custom")
        self.assertEqual(c.data, b"custom-alpn:hi")

    @inlineCallbacks
    def test_no_sni_gets_default_certificate(self) -> Any:
        result = yield self.exchange(
            None, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", check_hostname=False
        )
        self.assertEqual(result.names, ("default.example.com",))
        self.assertTrue(result.data.endswith(b"no name\n"), result.data)

    @inlineCallbacks
    def test_unknown_sni_default_policy(self) -> Any:
        result = yield self.exchange(
            "nope.example.net",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            check_hostname=False,
        )
        self.assertEqual(result.names, ("default.example.com",))
        self.assertIn(b"200", result.data.split(b"\r\n", 1)[0])

    @inlineCallbacks
    def test_client_hello_byte_by_byte(self) -> Any:
        """A ClientHello arriving one byte per TCP segment is still classified and terminated."""
        result = yield self.exchange("c.wild.example.com", b"split", byte_by_byte=True, read_until=b"split")
        self.assertEqual(result.names, ("*.wild.example.com",))
        self.assertEqual(result.data, b"wild:split")

    @inlineCallbacks
    def test_inner_preamble_carries_outer_facts(self) -> Any:
        spy = Spy(b"seen")
        self.target.inner.set_static_routes(
            [Route("spy", Match(protocol="http", sni="a.example.com", alpn="http/1.1"), spy)]
            + list(self.target.inner.static_routes)
        )
        yield self.exchange(
            "a.example.com", b"GET /x HTTP/1.1\r\nHost: a.example.com\r\n\r\n", alpn=("http/1.1",)
        )
        [preamble] = spy.seen
        self.assertEqual(preamble.protocol, "http")
        self.assertEqual(preamble.sni, "a.example.com")
        self.assertEqual(preamble.alpn, ("http/1.1",))
        self.assertTrue(preamble.tls_terminated)
        self.assertIn(preamble.tls_version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(preamble.path, "/x")

    @inlineCallbacks
    def test_silent_inner_route_carries_outer_facts(self) -> Any:
        """A client that says nothing after the handshake reaches the silent route, with its SNI."""
        from portmux.core.mux import SniffSettings

        greeter = Spy(b"220 hello\r\n")
        inner = self.target.inner
        inner.settings = SniffSettings(silence_timeout=0.2)
        inner.set_static_routes(list(inner.static_routes) + [Route("quiet", Match(silent=True), greeter)])
        result = yield self.exchange("a.example.com", b"", read_until=b"\r\n")
        self.assertEqual(result.data, b"220 hello\r\n")
        [preamble] = greeter.seen
        self.assertEqual(preamble.protocol, "silent")
        self.assertEqual(preamble.sni, "a.example.com")
        self.assertTrue(preamble.tls_terminated)

    # -- real clients -------------------------------------------------------

    def curl(self, *args: str) -> Any:
        command = [
            "curl", "-sS", "--max-time", "8", "--cacert", str(self.pki.ca_file),
            "--resolve", f"a.example.com:{self.port}:127.0.0.1",
            "-w", "\n%{http_version}", *args, f"https://a.example.com:{self.port}/hello",
        ]
        return in_thread(run, command)

    @inlineCallbacks
    def test_curl_http1_and_http2_same_host(self) -> Any:
        if need("curl"):
            self.skipTest(need("curl"))
        one = yield self.curl("--http1.1")
        self.assertEqual(one.returncode, 0, one.stderr)
        self.assertEqual(one.stdout, b"site a\n\n1.1")
        two = yield self.curl("--http2")
        self.assertEqual(two.returncode, 0, two.stderr)
        self.assertEqual(two.stdout, b"site a\n\n2")

    @inlineCallbacks
    def test_httpx_http2(self) -> Any:
        try:
            import httpx
        except ImportError:
            self.skipTest("httpx is not installed")

        def fetch() -> tuple[str, int, bytes]:
            transport = httpx.HTTPTransport(
                http2=True, verify=str(self.pki.ca_file)
            )
            # Connect to the loopback port while presenting a.example.com as SNI and :authority.
            with httpx.Client(transport=transport, http1=False, http2=True, timeout=8) as client:
                response = client.get(
                    f"https://127.0.0.1:{self.port}/hello",
                    headers={"Host": "a.example.com"},
                    extensions={"sni_hostname": "a.example.com"},
                )
                return response.http_version, response.status_code, response.content

        version, status, body = yield in_thread(fetch)
        self.assertEqual((version, status, body), ("HTTP/2", 200, b"site a\n"))

    @inlineCallbacks
    def test_openssl_s_client_alpn_and_sni(self) -> Any:
        if need("openssl"):
            self.skipTest(need("openssl"))
        result = yield in_thread(
            run,
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
             "-servername", "b.example.com", "-alpn", "h2,http/1.1", "-CAfile", str(self.pki.ca_file),
             "-verify_return_error", "-verify_hostname", "b.example.com"],
            b"hello",
        )
        out = result.stdout.decode("latin-1")
        self.assertIn("ALPN protocol: h2", out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertIn("Verification: OK", out)  # including -verify_hostname b.example.com


class RefuseUnknownNameTests(TerminationTests):
    """The same port with ``unknown_sni = "refuse"``."""

    unknown_sni = "refuse"

    @inlineCallbacks
    def test_unknown_sni_default_policy(self) -> Any:
        """Under "refuse" an unknown name gets a fatal unrecognized_name alert."""
        import ssl

        d = self.exchange("nope.example.net", b"", check_hostname=False)
        error = yield self.assertFailure(d, ssl.SSLError)
        self.assertIn("UNRECOGNIZED_NAME", str(error).upper())

    @inlineCallbacks
    def test_openssl_shows_unrecognized_name_alert(self) -> Any:
        if need("openssl"):
            self.skipTest(need("openssl"))
        result = yield in_thread(
            run,
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
             "-servername", "nope.example.net", "-CAfile", str(self.pki.ca_file)],
        )
        self.assertNotEqual(result.returncode, 0)
        text = (result.stdout + result.stderr).decode("latin-1").lower()
        self.assertIn("unrecognized name", text)
        self.assertIn("alert number 112", text)
        self.assertEqual(self.mux.stats.routes["https"].refused, 1)

    @inlineCallbacks
    def test_no_sni_gets_default_certificate(self) -> Any:
        """Clients without SNI still get the default certificate under "refuse"."""
        result = yield self.exchange(
            None, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", check_hostname=False
        )
        self.assertEqual(result.names, ("default.example.com",))
