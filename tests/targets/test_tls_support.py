"""Shared helpers for the TLS target tests: a test PKI, listeners and real clients."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.static import Data

reactor: Any = _reactor
TIMEOUT = 10.0


@dataclass
class PKI:
    """A private CA and certificate files written in the layouts the store accepts."""

    ca: trustme.CA
    ca_file: Path
    directory: Path
    a: Path  # key + chain in one file
    b: Path  # chain; key in b.key beside it
    wild: Path  # *.wild.example.com
    default: Path  # default.example.com


def make_pki(directory: Path) -> PKI:
    """Issue certificates for a/b.example.com, *.wild.example.com and a default one."""
    ca = trustme.CA()
    certs = directory / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    a = ca.issue_cert("a.example.com")
    a.private_key_and_cert_chain_pem.write_to_path(str(certs / "a.pem"))
    b = ca.issue_cert("b.example.com")
    with open(certs / "b.pem", "wb") as f:
        f.writelines(blob.bytes() for blob in b.cert_chain_pems)
    b.private_key_pem.write_to_path(str(certs / "b.key"))
    wild = ca.issue_cert("*.wild.example.com")
    wild.private_key_and_cert_chain_pem.write_to_path(str(certs / "wild.pem"))
    default = ca.issue_cert("default.example.com")
    default_path = directory / "default.pem"
    default.private_key_and_cert_chain_pem.write_to_path(str(default_path))
    return PKI(ca, ca_file, certs, certs / "a.pem", certs / "b.pem", certs / "wild.pem", default_path)


def listen(factory: Any) -> int:
    """Listen on an ephemeral loopback port; the caller closes via ``port.stopListening``."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port  # type: ignore[no-any-return]


class Echo(Protocol):
    """Echoes with a prefix, so tests can tell which target answered."""

    prefix = b"echo:"

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(self.prefix + data)  # type: ignore[union-attr]


def echo_factory(prefix: bytes) -> Factory:
    factory = Factory.forProtocol(Echo)
    factory.protocol = type("PrefixedEcho", (Echo,), {"prefix": prefix})
    return factory


def site_root(text: bytes) -> Resource:
    root = Resource()
    root.putChild(b"", Data(text, "text/plain"))
    root.putChild(b"hello", Data(text, "text/plain"))
    return root


@dataclass
class TLSResult:
    """What a Python ssl client saw."""

    alpn: str | None
    names: tuple[str, ...]
    version: str | None
    data: bytes


def tls_exchange(
    port: int,
    server_name: str | None,
    ca_file: Path,
    send: bytes = b"",
    alpn: tuple[str, ...] = (),
    byte_by_byte: bool = False,
    check_hostname: bool = True,
    read_until: bytes | None = None,
) -> TLSResult:
    """Blocking: TLS-connect with Python's ssl, send ``send``, read until close or ``read_until``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = check_hostname and server_name is not None
    if not context.check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        context.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if byte_by_byte:
        # Drive the handshake through memory BIOs so the ClientHello goes out one byte a write.
        return _byte_by_byte(raw, context, server_name, send, read_until)
    with context.wrap_socket(raw, server_hostname=server_name) as conn:
        names = _names(conn.getpeercert())
        if send:
            conn.sendall(send)
        data = _read(conn, read_until)
        return TLSResult(conn.selected_alpn_protocol(), names, conn.version(), data)


def _names(cert: Any) -> tuple[str, ...]:
    return tuple(v for k, v in (cert or {}).get("subjectAltName", ()) if k == "DNS")


def _read(conn: Any, until: bytes | None) -> bytes:
    chunks = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            break
        if not chunk:
            break
        chunks += chunk
        if until is not None and until in chunks:
            break
    return chunks


def _byte_by_byte(
    raw: socket.socket, context: ssl.SSLContext, server_name: str | None, send: bytes,
    until: bytes | None,
) -> TLSResult:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    first = True
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        pending = outgoing.read()
        if first:
            for i in range(len(pending)):  # the ClientHello, one TCP segment per byte
                raw.sendall(pending[i : i + 1])
            first = False
        elif pending:
            raw.sendall(pending)
        if done:
            break
        data = raw.recv(65536)
        if not data:
            raise ConnectionError("server closed during the handshake")
        incoming.write(data)
    names = _names(tls.getpeercert())
    tls.write(send)
    raw.sendall(outgoing.read())
    received = b""
    closed = False
    while not closed and (until is None or until not in received):
        data = raw.recv(65536)
        if not data:
            break
        incoming.write(data)
        while True:
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                closed = True
                break
    raw.close()
    return TLSResult(tls.selected_alpn_protocol(), names, tls.version(), received)


def in_thread(function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run a blocking client off the reactor thread."""
    return deferToThread(function, *args, **kwargs)


def need(binary: str) -> str | None:
    """The skip reason when ``binary`` is not installed, else None."""
    return None if shutil.which(binary) else f"{binary} is not installed"


def run(command: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Blocking: run a real client with a timeout, capturing both streams."""
    return subprocess.run(
        command, input=stdin, capture_output=True, timeout=TIMEOUT, check=False
    )


@inlineCallbacks
def wait_closed(mux: Any, route: str) -> Any:
    """Let a route's connections finish closing (bounded), so the reactor is clean."""
    for _ in range(100):
        counters = mux.stats.routes.get(route)
        if counters is None or counters.active == 0:
            break
        yield deferLater(reactor, 0.02, lambda: None)
    yield deferLater(reactor, 0.05, lambda: None)
