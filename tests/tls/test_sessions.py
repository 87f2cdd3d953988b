"""TLS session reuse at termination: session cache and tickets, rotation, every listener.

Real clients: ``openssl s_client -reconnect`` (TLS 1.2: s_client 3.0 reconnects
before it reads a TLS 1.3 ticket, so it never resumes 1.3 with any server) and
Python's ssl with a saved session (TLS 1.2 and 1.3).
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.factory import FactoryTarget
from portmux.targets.tls import TLSTarget
from portmux.tls import CertificateStore, TLSSettings
from tests.targets.test_tls_support import (
    TIMEOUT,
    echo_factory,
    in_thread,
    make_pki,
    need,
    reactor,
    run,
    wait_closed,
)


def client_context(ca_file: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context for exactly ``version`` (Python resumes only on the same context)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = context.maximum_version = version
    return context


def echo_once(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession | None, bool, bool]:
    """Blocking: one echo; (session to resume, reused?, peer certificate known?)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="a.example.com", session=session) as conn:
        conn.sendall(b"x")
        assert conn.recv(100) == b"echo:x"  # reading also takes in TLS 1.3 tickets
        reused = conn.session_reused
        # On a resumed handshake the server sends no Certificate message; the client
        # keeps the one from the session (so the name check still holds).
        return conn.session, reused, conn.getpeercert() is not None


class SessionReuseTests(TestCase):
    settings = TLSSettings()

    def setUp(self) -> None:
        self.pki = make_pki(Path(tempfile.mkdtemp()))
        self.store = CertificateStore([self.pki.directory], settings=self.settings)
        self.target = TLSTarget(reactor, self.store, [Route("echo", Match(), FactoryTarget(echo_factory(b"echo:")))])
        self.mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), self.target)])
        self.contexts: dict[ssl.TLSVersion, ssl.SSLContext] = {}
        self.ports = []
        for _ in range(2):  # two listeners of one process, as two [[listen]] entries
            port = reactor.listenTCP(0, self.mux.listener_factory(()), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.ports.append(port.getHost().port)
        self.addCleanup(wait_closed, self.mux, "https")

    def echo(self, version: ssl.TLSVersion, session: Any = None, listener: int = 0) -> Any:
        context = self.contexts.get(version)
        if context is None:
            context = self.contexts[version] = client_context(self.pki.ca_file, version)
        return in_thread(echo_once, self.ports[listener], context, session)

    @inlineCallbacks
    def test_openssl_s_client_reconnect_shows_reused(self) -> Any:
        if need("openssl"):
            self.skipTest(need("openssl"))
        for extra in ([], ["-no_ticket"]):  # a session ticket, then the server's session cache
            result = yield in_thread(
                run,
                ["openssl", "s_client", "-connect", f"127.0.0.1:{self.ports[0]}", "-servername",
                 "a.example.com", "-CAfile", str(self.pki.ca_file), "-tls1_2", "-reconnect", *extra],
            )
            lines = [line.split(",")[0] for line in result.stdout.decode("latin-1").splitlines()
                     if line.startswith(("New,", "Reused,"))]
            self.assertEqual(lines, ["New"] + ["Reused"] * 5, (extra, result.stderr))

    @inlineCallbacks
    def test_python_resumes_tls13_and_tls12_on_either_listener(self) -> Any:
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            session, reused, _ = yield self.echo(version)
            self.assertFalse(reused)
            _, reused, has_cert = yield self.echo(version, session, listener=1)
            self.assertTrue(reused, version)
            self.assertTrue(has_cert)

    @inlineCallbacks
    def test_rotation_ends_old_sessions_and_certificate_reload_keeps_them(self) -> Any:
        version = ssl.TLSVersion.TLSv1_3
        session, _, _ = yield self.echo(version)
        self.assertTrue(self.store.reload())
        session, reused, _ = yield self.echo(version, session)
        self.assertTrue(reused)
        self.store.rotate_session_keys()
        _, reused, _ = yield self.echo(version, session)
        self.assertFalse(reused)
        self.assertEqual(self.store.rotations, 1)

    def test_rotation_is_scheduled_every_session_lifetime(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        target = TLSTarget(clock, CertificateStore([self.pki.a], settings=TLSSettings(session_lifetime=600)))
        target.start()
        clock.advance(599)
        self.assertEqual(target.store.rotations, 0)
        clock.advance(1)
        clock.advance(600)
        self.assertEqual(target.store.rotations, 2)
        target.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class NoResumptionTests(SessionReuseTests):
    settings = TLSSettings(session_lifetime=0)

    @inlineCallbacks
    def test_python_resumes_tls13_and_tls12_on_either_listener(self) -> Any:
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            session, _, _ = yield self.echo(version)
            _, reused, _ = yield self.echo(version, session, listener=1)
            self.assertFalse(reused)

    test_openssl_s_client_reconnect_shows_reused = None  # type: ignore[assignment]
    test_rotation_ends_old_sessions_and_certificate_reload_keeps_them = None  # type: ignore[assignment]
