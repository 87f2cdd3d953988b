"""TLS records behind termination go out with a direct send when the socket is idle.

TerminatingTLS (portmux._twisted) sends each flight of records at once when the
accepted socket has nothing queued and hands the rest to the transport's buffer:
these tests check that nothing is reordered or lost when the socket's buffer
fills (a large answer to a slow reader), that the handshake still starts from a
ClientHello arriving in pieces, and that the same holds with fast paths off.
Real peers: Python's ssl (strict about close_notify) and curl.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import tempfile
import time
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

SIZE = 6 * 1024 * 1024
BODY = bytes(range(256)) * (SIZE // 256)
HEAD = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE


class LargeAnswer(Protocol):
    """An HTTP/1.0 backend: a 6 MiB answer in 64 KiB writes after the request, then close."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            transport: Any = self.transport
            transport.write(HEAD)
            for start in range(0, SIZE, 65536):
                transport.write(BODY[start:start + 65536])
            transport.loseConnection()


def slow_read(port: int, ca_file: Path, hello_in_pieces: bool) -> tuple[bytes, str]:
    """Blocking: request, wait before reading (the server's socket buffer fills), read to the end.

    ``hello_in_pieces`` sends the ClientHello in 7-byte writes with TCP_NODELAY.
    Returns the bytes and how the server ended.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: a small window
        raw.settimeout(TIMEOUT)
        raw.connect(("127.0.0.1", port))
        return _exchange(context, raw, hello_in_pieces)


def _exchange(context: ssl.SSLContext, raw: socket.socket, hello_in_pieces: bool) -> tuple[bytes, str]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            step = 7 if hello_in_pieces else len(pending) or 1
            for start in range(0, len(pending), step):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.sendall(pending[start:start + step])
                if hello_in_pieces:
                    time.sleep(0.002)
            chunk = raw.recv(65536)
            if not chunk:
                return b"", "closed during the handshake"
            incoming.write(chunk)
    tls.write(b"GET / HTTP/1.0\r\n\r\n")
    raw.sendall(outgoing.read())
    time.sleep(0.5)  # let portmux's socket buffer fill: its sends come up short
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = tls.read(65536)
        except ssl.SSLZeroReturnError:
            return data, "close_notify"
        except ssl.SSLWantReadError:
            chunk = None
        if chunk:
            data += chunk
            continue
        if chunk == b"":  # Python's ssl answers b"" once close_notify is read
            return data, "close_notify"
        received = raw.recv(65536)
        if not received:
            return data, "FIN without close_notify"
        incoming.write(received)
    return data, "no end within the timeout"


class DirectSendTests(TestCase):
    """TLS terminated by portmux, a large answer proxied from a plain backend."""

    def setUp(self) -> None:
        self.pki = make_pki(Path(tempfile.mkdtemp()))
        backend = reactor.listenTCP(0, Factory.forProtocol(LargeAnswer), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        target = TLSTarget(
            reactor,
            CertificateStore([self.pki.directory]),
            [Route("app", Match(), ProxyTarget(reactor, [f"tcp:127.0.0.1:{backend.getHost().port}"]))],
        )
        self.mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), target)])
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, self.mux, "https")
        self.port = port.getHost().port

    def assert_whole_answer(self, data: bytes) -> None:
        self.assertTrue(data.startswith(HEAD), data[:80])
        body = data[len(HEAD):]
        self.assertEqual(len(body), SIZE)
        self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(BODY).digest())

    @inlineCallbacks
    def test_large_answer_to_a_slow_reader_is_whole_and_in_order(self) -> Any:
        data, ending = yield in_thread(slow_read, self.port, self.pki.ca_file, False)
        self.assert_whole_answer(data)
        self.assertEqual(ending, "close_notify")

    @inlineCallbacks
    def test_client_hello_in_pieces(self) -> Any:
        data, ending = yield in_thread(slow_read, self.port, self.pki.ca_file, True)
        self.assert_whole_answer(data)
        self.assertEqual(ending, "close_notify")

    @inlineCallbacks
    def test_curl_gets_every_byte(self) -> Any:
        if need("curl"):
            self.skipTest(need("curl"))
        result = yield in_thread(
            run,
            ["curl", "-sS", "--http1.0", "--limit-rate", "8M", "--cacert", str(self.pki.ca_file),
             "--resolve", f"a.example.com:{self.port}:127.0.0.1",
             f"https://a.example.com:{self.port}/"],
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(hashlib.sha256(result.stdout).digest(), hashlib.sha256(BODY).digest())
