# -*- test-case-name: tests.targets.test_tls_proxy -*-
"""Client TLS contexts for re-encryption to a backend.

``client_endpoint`` wraps a ``tls:`` endpoint string with hostname verification, a
private CA bundle and an optional client certificate; its ``connect`` fires only
after a verified handshake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger(namespace="portmux")

__all__ = [
    "BackendTLSError",
    "VerifiedTLSEndpoint",
    "client_endpoint",
    "client_tls_options",
    "is_tls_endpoint",
]

from portmux.tls._certificates import (
    CertificateError,
    CertificateSource,
    PathLike,
    _expand,
    load_pem,
)


class BackendTLSError(ConnectionError):
    """The backend's TLS handshake failed: untrusted or wrong-name certificate, or no TLS."""


def _fields(description: str) -> tuple[list[str], dict[str, str]]:
    """Positional and keyword fields after the prefix, split as Twisted splits them.

    ``:`` separates fields, the first unescaped ``=`` makes a keyword, ``\\`` escapes.
    """
    positional: list[str] = []
    keywords: dict[str, str] = {}
    key: str | None = None
    current: list[str] = []
    escaped = False
    for char in description + ":":
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=" and key is None:
            key, current = "".join(current), []
        elif char == ":":
            if key is None:
                positional.append("".join(current))
            else:
                keywords[key] = "".join(current)
            key, current = None, []
        else:
            current.append(char)
    return positional[1:], keywords


OWN_TLS_KEYS = ("host", "port", "timeout", "ca", "server_name")
"""Keys of a ``tls:`` string portmux's verified endpoint reads itself."""


def _own_reading(description: str) -> tuple[str, int, str | None, dict[str, str]] | str:
    """(host, port, timeout, other keywords) if portmux reads the string; else why not."""
    positional, keywords = _fields(description)
    names = ("host", "port", "timeout")
    if len(positional) > len(names):
        return f"{len(positional)} positional fields"
    for name, value in zip(names, positional):
        if name in keywords:
            return f"{name} given twice"
        keywords[name] = value
    others = sorted(set(keywords) - set(OWN_TLS_KEYS))
    if others:
        return f"Twisted's own option(s) {', '.join(others)}"
    if "host" not in keywords or "port" not in keywords:
        return "no HOST:PORT"
    try:
        port = int(keywords.pop("port"))
    except ValueError:
        return "a port that is not a number"
    if not 0 < port < 65536:
        return "a port out of range"
    return keywords.pop("host"), port, keywords.pop("timeout", None), keywords


def _load_ca(path: Path) -> Any:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as e:
        raise CertificateError(f"{path}: cannot read the CA bundle: {e.strerror}") from None
    except ValueError:
        raise CertificateError(f"{path}: no PEM certificate in the CA bundle") from None
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs]
    )


def _load_client_certificate(source: CertificateSource, base_dir: Path) -> Any:
    (cert_path, key_path), *_ = _expand(source, base_dir)
    key = load_pem(cert_path, key_path)
    pem_key = key.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem_cert = key.certificate.public_bytes(serialization.Encoding.PEM)
    return ssl.PrivateCertificate.loadPEM(pem_cert + pem_key)


@dataclass(frozen=True)
class _ClientTLS:
    host: str
    port: int
    timeout: float
    server_name: str
    creator: Any


def client_tls_options(
    server_name: str,
    ca: PathLike | None = None,
    client_cert: CertificateSource | None = None,
    base_dir: PathLike = ".",
    alpn: Sequence[str] = (),
) -> Any:
    """Client connection creator verifying ``server_name`` against ``ca`` (or the system roots)."""
    base = Path(base_dir)
    trust = _load_ca(base / Path(ca)) if ca is not None else ssl.platformTrust()
    client = _load_client_certificate(client_cert, base) if client_cert is not None else None
    protocols = [p.encode("ascii") for p in alpn] or None
    return ssl.optionsForClientTLS(
        server_name, trustRoot=trust, clientCertificate=client, acceptableProtocols=protocols
    )


def is_tls_endpoint(description: str) -> bool:
    """True for a ``tls:`` client endpoint string."""
    return description.split(":", 1)[0].lower() == "tls"


def client_endpoint(
    reactor: Any,
    description: str,
    ca: PathLike | None = None,
    client_cert: CertificateSource | None = None,
    server_name: str | None = None,
    base_dir: PathLike = ".",
    timeout: float = 10.0,
) -> IStreamClientEndpoint:
    """A client endpoint; ``tls:HOST:PORT[:timeout=S]`` re-encrypts with verification.

    portmux reads a ``tls:`` string itself only when it holds nothing but host,
    port, timeout, ca and server_name; any other string (Twisted's own
    ``trustRoots``, ``certificate``, ``bindAddress``...) goes to Twisted's
    ``clientFromString`` unchanged, so a string Twisted accepts is never
    rejected.  ``ca``, ``client_cert`` and ``server_name`` need portmux's
    reading and raise ValueError otherwise.
    """
    from twisted.internet.endpoints import clientFromString

    if not is_tls_endpoint(description):
        if ca is not None or client_cert is not None or server_name is not None:
            raise ValueError(
                f"ca, client_cert and server_name need a tls: endpoint, not {description!r}"
            )
        return clientFromString(reactor, description)  # type: ignore[no-any-return]
    reading = _own_reading(description)
    if isinstance(reading, str):
        # Not portmux's: Twisted's own tls: endpoint, unless portmux options ask for ours.
        given = {"ca": ca, "client_cert": client_cert, "server_name": server_name}
        given.update((k, v) for k, v in _fields(description)[1].items() if k in given)
        own = sorted(k for k, v in given.items() if v is not None)
        if own:
            raise ValueError(
                f"{description!r} has {reading}, which portmux's verified tls: endpoint does "
                f"not read, so it cannot be combined with {', '.join(own)}; give HOST:PORT "
                "with timeout/ca/server_name only, or drop the portmux options to use "
                "Twisted's own tls: endpoint"
            )
        try:
            return clientFromString(reactor, description)  # type: ignore[no-any-return]
        except Exception as e:  # noqa: BLE001 - endpoint parsers raise many kinds of errors
            raise ValueError(f"unparsable client endpoint {description!r}: {e}") from None
    host, port, timeout_text, keywords = reading
    try:
        timeout = float(timeout_text) if timeout_text is not None else timeout
    except ValueError:
        raise ValueError(f"bad timeout in {description!r}") from None
    ca = keywords.pop("ca", None) if ca is None else ca
    server_name = keywords.pop("server_name", None) if server_name is None else server_name
    name = server_name or host
    creator = client_tls_options(name, ca=ca, client_cert=client_cert, base_dir=base_dir)
    endpoint = VerifiedTLSEndpoint(reactor, _ClientTLS(host, port, timeout, name, creator))
    return cast(IStreamClientEndpoint, endpoint)


@implementer(IStreamClientEndpoint)
class VerifiedTLSEndpoint:
    """TLS over TCP whose ``connect`` fires with the protocol only after a verified handshake."""

    def __init__(self, reactor: Any, spec: _ClientTLS) -> None:
        self._reactor = reactor
        self._spec = spec
        self.description = f"tls:{spec.host}:{spec.port} (verifying {spec.server_name})"

    def __repr__(self) -> str:
        return f"<VerifiedTLSEndpoint {self.description}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        from twisted.internet.endpoints import HostnameEndpoint

        spec = self._spec
        connecting: Deferred[Any]

        def cancel(done: Deferred[IProtocol]) -> None:
            connecting.cancel()
            waiter = waiter_factory.waiter
            if waiter is not None and waiter.transport is not None:
                waiter.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport

        done: Deferred[IProtocol] = Deferred(cancel)
        waiter_factory = _WaiterFactory(protocolFactory, done, spec.server_name)
        tls = TLSMemoryBIOFactory(
            spec.creator, True, cast(IProtocolFactory, waiter_factory), clock=self._reactor
        )
        tcp = HostnameEndpoint(self._reactor, spec.host, spec.port, timeout=spec.timeout)
        connecting = tcp.connect(cast(IProtocolFactory, tls))

        def failed(reason: Failure) -> None:
            if not done.called:
                done.errback(reason)

        connecting.addErrback(failed)
        timer = self._reactor.callLater(spec.timeout, self._expire, done, cancel)

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(finished)
        return done

    def _expire(
        self, done: Deferred[IProtocol], cancel: Callable[[Deferred[IProtocol]], None]
    ) -> None:
        if done.called:
            return
        spec = self._spec
        done.errback(BackendTLSError(f"TLS connection to {spec.host}:{spec.port} timed out"))
        cancel(done)


class _WaiterFactory(Factory):
    def __init__(self, wrapped: IProtocolFactory, done: Deferred[IProtocol], name: str) -> None:
        self.wrapped = wrapped
        self.done = done
        self.name = name
        self.waiter: _HandshakeWaiter | None = None

    def buildProtocol(self, addr: Any) -> Protocol:
        self.waiter = _HandshakeWaiter(self, addr)
        return self.waiter


@implementer(IHandshakeListener)
class _HandshakeWaiter(Protocol):
    """Stands in until the handshake is verified, then swaps the real protocol in."""

    def __init__(self, factory: _WaiterFactory, addr: Any) -> None:
        self.owner = factory
        self.addr = addr
        self.pending = b""

    def handshakeCompleted(self) -> None:
        tls = self.transport
        assert tls is not None  # a handshake completes on a connected transport
        owner = self.owner
        if owner.done.called:  # timed out meanwhile
            tls.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport
            return
        protocol = owner.wrapped.buildProtocol(self.addr)
        if protocol is None:
            tls.loseConnection()
            owner.done.errback(ConnectionRefusedError("factory declined the connection"))
            return
        tls.wrappedProtocol = protocol  # type: ignore[attr-defined]  # a TLSMemoryBIOProtocol
        protocol.makeConnection(tls)
        if self.pending:
            protocol.dataReceived(self.pending)
        owner.done.callback(protocol)

    def dataReceived(self, data: bytes) -> None:
        self.pending += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        owner = self.owner
        if owner.done.called:
            return
        owner.done.errback(BackendTLSError(_explain(reason, owner.name)))


def _explain(reason: Failure, name: str) -> str:
    """A short sentence for a failed backend handshake."""
    value = reason.value
    if isinstance(value, ssl.VerificationError):
        return f"backend certificate does not match {name!r}: {_first(value)}"
    if isinstance(value, SSL.Error):
        text = _first(value)
        if "certificate verify failed" in text:
            return f"backend certificate for {name!r} is not trusted ({text})"
        return f"TLS handshake with backend {name!r} failed: {text}"
    return f"backend {name!r} closed before the TLS handshake finished: {value}"


def _first(error: BaseException) -> str:
    """The most telling text of an OpenSSL or verification error."""
    args = error.args
    if args and isinstance(args[0], list) and args[0]:
        entry = args[0][0]
        if isinstance(entry, tuple) and entry:
            return str(entry[-1])
    if args:
        return str(args[0])
    return type(error).__name__
