"""TLS passthrough by SNI and re-encryption to verified TLS backends."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import trustme
from twisted.internet import ssl as tssl
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.proxy import ProxyTarget
from portmux.tls import BackendTLSError, client_endpoint, load_pem
from tests.targets.test_tls_support import (
    TIMEOUT,
    echo_factory,
    in_thread,
    make_pki,
    reactor,
    tls_exchange,
    wait_closed,
)


def tls_backend(testcase: TestCase, cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> int:
    """A Twisted TLS echo server with ``cert``; requires client certificates from ``client_ca``."""
    kwargs: dict[str, Any] = {}
    if client_ca is not None:
        kwargs["trustRoot"] = tssl.Certificate.loadPEM(client_ca.cert_pem.bytes())
    pem = cert.private_key_and_cert_chain_pem.bytes()
    private = tssl.PrivateCertificate.loadPEM(pem)
    options = tssl.CertificateOptions(
        privateKey=private.privateKey.original, certificate=private.original, **kwargs
    )
    port = reactor.listenSSL(0, echo_factory(b"tls-backend:"), options, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port  # type: ignore[no-any-return]


def plain_exchange(port: int, send: bytes) -> bytes:
    """Blocking plaintext request; read until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(send)
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            if b"tls-backend:" in data and data.endswith(send):
                break
        return data


class PassthroughTests(TestCase):
    @inlineCallbacks
    def test_client_hello_reaches_backend_unchanged(self) -> Any:
        """portmux holds no key for pass.example.com; the backend's own certificate verifies."""
        pki = make_pki(Path(tempfile.mkdtemp()))
        backend = tls_backend(self, pki.ca.issue_cert("pass.example.com"))
        mux = Multiplexer(
            reactor,
            [Route("pass", Match(protocol="tls", sni="pass.example.com"),
                   ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend}"]))],
        )
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, mux, "pass")
        result = yield in_thread(
            tls_exchange, port.getHost().port, "pass.example.com", pki.ca_file, b"hi",
            read_until=b"hi",
        )
        self.assertEqual(result.names, ("pass.example.com",))
        self.assertEqual(result.data, b"tls-backend:hi")
        split = yield in_thread(
            tls_exchange, port.getHost().port, "pass.example.com", pki.ca_file, b"split",
            byte_by_byte=True, read_until=b"split",
        )
        self.assertEqual(split.data, b"tls-backend:split")


class ReencryptionTests(TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.pki = make_pki(self.tmp)
        self.client_cert = self.tmp / "client.pem"
        self.pki.ca.issue_cert("portmux.client").private_key_and_cert_chain_pem.write_to_path(
            str(self.client_cert)
        )

    def front(self, endpoint: Any) -> int:
        mux = Multiplexer(
            reactor, [Route("re", Match(protocol="http"), ProxyTarget(reactor, [endpoint], 5.0))]
        )
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, mux, "re")
        return port.getHost().port  # type: ignore[no-any-return]

    @inlineCallbacks
    def test_verified_backend(self) -> Any:
        backend = tls_backend(self, self.pki.ca.issue_cert("backend.example.com"))
        endpoint = client_endpoint(
            reactor, f"tls:127.0.0.1:{backend}", ca=self.pki.ca_file, server_name="backend.example.com"
        )
        request = b"GET / HTTP/1.0\r\n\r\n"
        data = yield in_thread(plain_exchange, self.front(endpoint), request)
        self.assertEqual(data, b"tls-backend:" + request)

    @inlineCallbacks
    def test_client_certificate(self) -> Any:
        backend = tls_backend(self, self.pki.ca.issue_cert("backend.example.com"), client_ca=self.pki.ca)
        with_cert = client_endpoint(
            reactor, f"tls:127.0.0.1:{backend}:server_name=backend.example.com",
            ca=self.pki.ca_file, client_cert=self.client_cert,
        )
        request = b"GET / HTTP/1.0\r\n\r\n"
        data = yield in_thread(plain_exchange, self.front(with_cert), request)
        self.assertEqual(data, b"tls-backend:" + request)
        without = client_endpoint(
            reactor, f"tls:127.0.0.1:{backend}", ca=self.pki.ca_file, server_name="backend.example.com"
        )
        # TLS 1.3: the client's handshake finishes before the backend checks the client
        # certificate, so the backend's alert closes the connection after it was accepted.
        data = yield in_thread(plain_exchange, self.front(without), request)
        self.assertNotIn(b"tls-backend:", data)

    def refusal_reasons(self) -> list[str]:
        """The reasons of the refusal log lines from now on (the list fills as they come)."""
        reasons: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_format", "").startswith("refused"):
                reasons.append(event["reason"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return reasons

    @inlineCallbacks
    def test_wrong_name_refused(self) -> Any:
        backend = tls_backend(self, self.pki.ca.issue_cert("other.example.com"))
        endpoint = client_endpoint(
            reactor, f"tls:127.0.0.1:{backend}", ca=self.pki.ca_file, server_name="backend.example.com"
        )
        logged = self.refusal_reasons()
        data = yield in_thread(plain_exchange, self.front(endpoint), b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 502"), data)
        self.assertNotIn(b"does not match", data)  # the client gets no details
        self.assertIn("does not match 'backend.example.com'", logged[0])  # the log line has them

    @inlineCallbacks
    def test_untrusted_certificate_refused(self) -> Any:
        stranger = trustme.CA().issue_cert("backend.example.com")
        backend = tls_backend(self, stranger)
        endpoint = client_endpoint(
            reactor, f"tls:127.0.0.1:{backend}", ca=self.pki.ca_file, server_name="backend.example.com"
        )
        logged = self.refusal_reasons()
        data = yield in_thread(plain_exchange, self.front(endpoint), b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 502"), data)
        self.assertNotIn(b"is not trusted", data)  # the client gets no details
        self.assertIn("is not trusted", logged[0])  # the log line has them

    @inlineCallbacks
    def test_endpoint_errback_is_clear(self) -> Any:
        """connect() fails with BackendTLSError, not a half-open protocol."""
        backend = tls_backend(self, self.pki.ca.issue_cert("other.example.com"))
        endpoint = client_endpoint(
            reactor, f"tls:127.0.0.1:{backend}", ca=self.pki.ca_file, server_name="backend.example.com"
        )
        error = yield self.assertFailure(endpoint.connect(echo_factory(b"")), BackendTLSError)
        self.assertIn("backend.example.com", str(error))

    def test_every_string_twisted_accepts_is_accepted(self) -> None:
        """portmux reads host/port/timeout/ca/server_name; anything else is Twisted's tls:."""
        from twisted.internet.endpoints import clientFromString

        from portmux.tls import VerifiedTLSEndpoint

        cases = {
            "tls:127.0.0.1:443": True,
            "tls:127.0.0.1:443:7": True,
            "tls:host=127.0.0.1:port=443:timeout=3": True,
            "tls:127.0.0.1:443:bindAddress=127.0.0.1": False,
            "tls:127.0.0.1:443:5:127.0.0.1": False,
            f"tls:127.0.0.1:443:trustRoots={Path(self.pki.ca_file).parent}": False,
        }
        for description, ours in cases.items():
            clientFromString(reactor, description)  # Twisted accepts it...
            endpoint = client_endpoint(reactor, description)  # ...so portmux does too
            self.assertEqual(isinstance(endpoint, VerifiedTLSEndpoint), ours, description)
        keyed = client_endpoint(reactor, "tls:host=127.0.0.1:port=443:timeout=3")
        self.assertIn("tls:127.0.0.1:443", keyed.description)  # type: ignore[attr-defined]

    def test_bad_strings(self) -> None:
        with self.assertRaises(ValueError):
            client_endpoint(reactor, "tcp:127.0.0.1:1", ca=self.pki.ca_file)
        with self.assertRaises(ValueError):
            client_endpoint(reactor, "tls:127.0.0.1")
        with self.assertRaises(ValueError):
            client_endpoint(reactor, "tls:127.0.0.1:443:bogus=1")  # Twisted rejects it too
        with self.assertRaises(ValueError):
            client_endpoint(reactor, "tls:127.0.0.1:443:timeout=soon")
        with self.assertRaises(ValueError) as raised:
            client_endpoint(reactor, "tls:127.0.0.1:443:bindAddress=127.0.0.1", ca=self.pki.ca_file)
        self.assertIn("bindAddress", str(raised.exception))
        with self.assertRaises(ValueError):
            client_endpoint(reactor, "tls:127.0.0.1:443:trustRoots=/x:server_name=a.example")
        self.assertEqual(load_pem(self.client_cert).names, ("portmux.client",))

