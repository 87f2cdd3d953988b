"""The certificate store: PEM layouts, SNI selection with wildcards, secure defaults, reload."""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

import trustme
from OpenSSL import SSL
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.factory import FactoryTarget
from portmux.targets.tls import TLSTarget
from portmux.tls import CertificateError, CertificateStore, TLSSettings, load_pem
from tests.targets.test_tls_support import (
    TIMEOUT,
    echo_factory,
    in_thread,
    make_pki,
    reactor,
    wait_closed,
)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.pki = make_pki(self.tmp)

    def test_directory_layouts_and_names(self) -> None:
        """Key + chain in one file, and chain with <stem>.key beside it, both load."""
        store = CertificateStore([self.pki.directory], self.pki.default)
        self.assertEqual(
            set(store.names()),
            {"a.example.com", "b.example.com", "*.wild.example.com", "default.example.com"},
        )
        self.assertEqual(store.default.names, ("default.example.com",))

    def test_sni_selection(self) -> None:
        store = CertificateStore([self.pki.directory], self.pki.default)
        self.assertEqual(store.lookup("A.Example.COM.").names, ("a.example.com",))  # type: ignore[union-attr]
        self.assertEqual(store.lookup("x.wild.example.com").names, ("*.wild.example.com",))  # type: ignore[union-attr]
        self.assertIsNone(store.lookup("a.b.wild.example.com"))  # one label only
        self.assertIsNone(store.lookup("wild.example.com"))
        self.assertIsNone(store.lookup(None))

    def test_exact_name_beats_wildcard(self) -> None:
        exact = self.pki.ca.issue_cert("x.wild.example.com")
        path = self.tmp / "x.pem"
        exact.private_key_and_cert_chain_pem.write_to_path(str(path))
        store = CertificateStore([self.pki.wild, path])
        self.assertEqual(store.lookup("x.wild.example.com").source, str(path))  # type: ignore[union-attr]

    def test_default_is_first_without_default_certificate(self) -> None:
        store = CertificateStore([self.pki.b, self.pki.a])
        self.assertEqual(store.default.names, ("b.example.com",))

    def test_refuse_policy(self) -> None:
        store = CertificateStore([self.pki.a], settings=TLSSettings(unknown_sni="refuse"))
        self.assertTrue(store.refuses("nope.example.com"))
        self.assertFalse(store.refuses("a.example.com"))
        self.assertFalse(store.refuses(None))

    def test_secure_defaults(self) -> None:
        store = CertificateStore([self.pki.a], settings=TLSSettings(alpn=("h2",)))
        context = store.keys[0].context
        options = context.set_options(0)
        for flag in (SSL.OP_NO_COMPRESSION, SSL.OP_NO_RENEGOTIATION, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(options & flag, flag)

    def test_bad_inputs_name_the_file(self) -> None:
        garbage = self.tmp / "garbage.pem"
        garbage.write_text("not a pem\n")
        with self.assertRaises(CertificateError) as caught:
            CertificateStore([garbage])
        self.assertIn("garbage.pem", str(caught.exception))
        keyless = self.tmp / "keyless.pem"
        keyless.write_bytes(self.pki.ca.issue_cert("k.example.com").cert_chain_pems[0].bytes())
        with self.assertRaises(CertificateError) as caught:
            CertificateStore([keyless])
        self.assertIn("keyless.key", str(caught.exception))
        mismatch = self.tmp / "mismatch.pem"
        mismatch.write_bytes(
            self.pki.ca.issue_cert("m.example.com").cert_chain_pems[0].bytes()
            + self.pki.ca.issue_cert("n.example.com").private_key_pem.bytes()
        )
        with self.assertRaises(CertificateError) as caught:
            load_pem(mismatch)
        self.assertIn("does not match", str(caught.exception))
        with self.assertRaises(ValueError):
            TLSSettings(min_version="TLSv9")
        with self.assertRaises(ValueError):
            TLSSettings(unknown_sni="maybe")

    def test_reload_keeps_old_on_broken_certificate(self) -> None:
        store = CertificateStore([self.pki.a])
        old = store.keys[0]
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.pki.a.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        self.assertFalse(store.reload())
        self.assertIs(store.keys[0], old)
        [event] = [e for e in events if "not reloaded" in e.get("log_format", "")]
        self.assertIn("a.pem", event["error"])


class ReloadUnderOpenConnectionTests(TestCase):
    @inlineCallbacks
    def test_reload_swaps_certificate_keeps_open_connection(self) -> Any:
        tmp = Path(tempfile.mkdtemp())
        pki = make_pki(tmp)
        store = CertificateStore([pki.wild])
        target = TLSTarget(
            reactor, store, [Route("w", Match(sni="*.wild.example.com"), FactoryTarget(echo_factory(b"w:")))]
        )
        mux = Multiplexer(reactor, [Route("tls", Match(protocol="tls"), target)])
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, mux, "tls")
        number = port.getHost().port
        second_ca = trustme.CA()
        both = tmp / "both.pem"
        both.write_bytes(pki.ca.cert_pem.bytes() + second_ca.cert_pem.bytes())

        def open_connection() -> Any:
            context = ssl.create_default_context(cafile=str(both))
            raw = socket.create_connection(("127.0.0.1", number), timeout=TIMEOUT)
            conn = context.wrap_socket(raw, server_hostname="x.wild.example.com")
            conn.sendall(b"one")
            return conn, conn.recv(100), conn.getpeercert()["issuer"]

        conn, first, old_issuer = yield in_thread(open_connection)
        self.assertEqual(first, b"w:one")
        second_ca.issue_cert("*.wild.example.com").private_key_and_cert_chain_pem.write_to_path(
            str(pki.wild)
        )
        self.assertTrue(target.reload())

        def use_old() -> bytes:
            conn.sendall(b"two")
            data: bytes = conn.recv(100)
            conn.close()
            return data

        self.assertEqual((yield in_thread(use_old)), b"w:two")
        _, fresh, new_issuer = yield in_thread(open_connection)
        self.assertEqual(fresh, b"w:one")
        self.assertNotEqual(old_issuer, new_issuer)


class FromConfigTests(SynchronousTestCase):
    """A ``[route.tls]`` table through portmux.daemon.config: paths, options, nested routes, problems."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.pki = make_pki(self.tmp)

    def parse(self, tls: str) -> Any:
        from portmux.daemon.config import parse_config

        text = (
            '[[listen]]\nendpoint = "tcp:0"\n'
            '[[route]]\nname = "https"\nmatch = { protocol = "tls" }\n'
            f"[route.tls]\n{tls}"
        )
        return parse_config(text, "t.toml", reactor, self.tmp)

    def problems(self, tls: str) -> list[tuple[str, str]]:
        from portmux.daemon.config import ConfigError

        with self.assertRaises(ConfigError) as info:
            self.parse(tls)
        return [(e.key_path, e.message) for e in info.exception.errors]

    def test_relative_paths_and_nested_routes(self) -> None:
        config = self.parse(
            'certificates = ["certs/"]\n'
            'default_certificate = "default.pem"\n'
            'unknown_sni = "refuse"\n'
            'alpn = ["h2", "http/1.1"]\n'
            'min_version = "TLSv1.3"\n'
            '[[route.tls.route]]\nname = "inner"\nmatch = { sni = "a.example.com" }\necho = true\n'
        )
        target = config.routes[0].target
        assert isinstance(target, TLSTarget)
        self.assertEqual(target.store.default.names, ("default.example.com",))
        self.assertEqual(target.store.settings.min_version, "TLSv1.3")
        self.assertEqual(target.store.settings.alpn, ("h2", "http/1.1"))
        self.assertEqual([r.name for r in target.inner.router.routes], ["inner"])

    def test_problems_are_reported(self) -> None:
        missing = self.problems('certificates = ["missing.pem"]\n')
        self.assertEqual([k for k, _ in missing], ["route[0].tls.certificates[0]"])
        self.assertIn("missing.pem", missing[0][1])
        self.assertEqual(
            self.problems('certificates = ["certs/"]\nunknown_sni = "x"\n'),
            [("route[0].tls.unknown_sni", 'expected "default" or "refuse", got "x"')],
        )
        self.assertEqual(
            [k for k, _ in self.problems("certificats = []\n")],
            ["route[0].tls.certificates", "route[0].tls.certificats"],
        )


