"""A proxied connection behind TLS termination ends with close_notify, then FIN.

Real peers: openssl s_client, Python's ssl with ragged EOFs reported, and the
``websockets`` library as both the wss:// client and the proxied backend.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.proxy import ProxyTarget
from portmux.targets.tls import TLSTarget
from portmux.tls import CertificateStore
from tests.targets.test_tls_support import (
    TIMEOUT,
    in_thread,
    make_pki,
    need,
    reactor,
    run,
    wait_closed,
)

BODY = b"hello from an HTTP/1.0 backend\n"


class AnswerAndClose(Protocol):
    """An HTTP/1.0 backend: one answer after the request's headers, then close."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY
            )
            self.transport.loseConnection()  # type: ignore[union-attr]


def strict_exchange(port: int, ca_file: Path, request: bytes) -> tuple[bytes, str]:
    """Blocking: send ``request``; read to the end, telling close_notify from a bare FIN.

    Returns the bytes and how the server ended: "close_notify, then FIN" or what it did.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    conn = context.wrap_socket(raw, server_hostname="a.example.com", suppress_ragged_eofs=False)
    conn.sendall(request)
    data = b""
    try:
        while chunk := conn.recv(65536):  # b"" only on close_notify
            data += chunk
    except ssl.SSLEOFError:
        conn.close()
        return data, "FIN without close_notify"
    plain = conn.unwrap()  # our close_notify back; the server may now close
    ending = "close_notify, then FIN" if plain.recv(1) == b"" else "bytes after close_notify"
    plain.close()
    return data, ending


class TerminatedProxyCloseTests(TestCase):
    """TLS terminated by portmux, plaintext proxied to a backend that answers and closes."""

    def setUp(self) -> None:
        self.pki = make_pki(Path(tempfile.mkdtemp()))
        backend = reactor.listenTCP(0, Factory.forProtocol(AnswerAndClose), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        self.target = TLSTarget(
            reactor,
            CertificateStore([self.pki.directory]),
            [Route("app", Match(), ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend.getHost().port}"]))],
        )
        self.mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), self.target)])
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, self.mux, "https")
        self.port = port.getHost().port

    @inlineCallbacks
    def test_python_ssl_sees_all_bytes_then_close_notify_then_fin(self) -> Any:
        data, ending = yield in_thread(
            strict_exchange, self.port, self.pki.ca_file, b"GET / HTTP/1.0\r\n\r\n"
        )
        self.assertTrue(data.endswith(BODY), data)
        self.assertEqual(ending, "close_notify, then FIN")

    @inlineCallbacks
    def test_openssl_s_client_reports_no_unexpected_eof(self) -> Any:
        if need("openssl"):
            self.skipTest(need("openssl"))
        result = yield in_thread(
            run,
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-servername",
             "a.example.com", "-CAfile", str(self.pki.ca_file), "-ign_eof"],
            b"GET / HTTP/1.0\r\n\r\n",
        )
        out = result.stdout.decode("latin-1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(BODY.decode(), out)
        self.assertIn("\nclosed\n", out)  # s_client's word for a received close_notify
        self.assertNotIn(b"unexpected eof", result.stderr)


class WebSocketThroughTerminationTests(TestCase):
    """wss:// to portmux, ws:// to a ``websockets`` echo backend; both closes are clean."""

    def setUp(self) -> None:
        try:
            from websockets.sync.server import serve
        except ImportError:
            self.skipTest("websockets is not installed")
        self.pki = make_pki(Path(tempfile.mkdtemp()))
        self.backend_close_codes: list[int | None] = []
        self.backend_done = threading.Event()

        def echo(ws: Any) -> None:
            for message in ws:
                ws.send(message)
            self.backend_close_codes.append(ws.close_code)
            self.backend_done.set()

        server = serve(echo, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, TIMEOUT)
        self.addCleanup(server.shutdown)
        backend_port = server.socket.getsockname()[1]
        target = TLSTarget(
            reactor,
            CertificateStore([self.pki.directory]),
            [Route("ws", Match(protocol="http"), ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend_port}"]))],
        )
        self.mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), target)])
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, self.mux, "https")
        self.port = port.getHost().port

    def client(self) -> tuple[list[str], int | None]:
        """Blocking: echo two messages over wss:// and close; ragged EOFs are errors here."""
        from websockets.sync.client import connect

        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        tls = context.wrap_socket(raw, server_hostname="a.example.com", suppress_ragged_eofs=False)
        # ws:// over our own TLS socket: websockets uses it as given, ragged EOF checks on.
        with connect("ws://a.example.com/echo", sock=tls, close_timeout=TIMEOUT) as ws:
            replies = []
            for text in ("one", "two"):
                ws.send(text)
                replies.append(ws.recv(timeout=TIMEOUT))
        return replies, ws.close_code

    @inlineCallbacks
    def test_echo_and_clean_close(self) -> Any:
        replies, close_code = yield in_thread(self.client)
        self.assertEqual(replies, ["one", "two"])
        self.assertEqual(close_code, 1000)
        finished = yield in_thread(self.backend_done.wait, TIMEOUT)  # its handler's own thread
        self.assertTrue(finished)
        self.assertEqual(self.backend_close_codes, [1000])
