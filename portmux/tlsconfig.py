"""TLS configuration: the server certificate store (SNI, ALPN, reload) and client contexts.

Server side: PEM files or directories are loaded into one immutable snapshot of
per-name OpenSSL contexts; Twisted's public ``CertificateOptions(contextForServerName=)``
hook picks one per ClientHello. ``reload()`` builds a whole new snapshot and
swaps it only if every certificate loaded.

Client side (re-encryption to a backend): ``client_endpoint`` wraps a ``tls:``
endpoint string with hostname verification, a private CA bundle and an
optional client certificate; its ``connect`` fires only after a verified handshake.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger(namespace="portmux")

__all__ = [
    "CertificateError",
    "CertificateStore",
    "CertifiedKey",
    "TLSSettings",
    "client_endpoint",
    "load_pem",
    "parse_tls_version",
]

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1_0,
    "TLSv1.0": ssl.TLSVersion.TLSv1_0,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
SECURE_MINIMUM = "TLSv1.2"
PEM_SUFFIXES = (".pem", ".crt", ".cer")
UNKNOWN_SNI_POLICIES = ("default", "refuse")

PathLike = Union[str, "os.PathLike[str]"]
CertificateSource = PathLike | tuple[PathLike, PathLike]
"""A PEM path (key + chain, or chain with ``<stem>.key`` beside it), a directory, or (cert, key)."""


class CertificateError(Exception):
    """A certificate or key could not be used; the message says which file and why."""


def parse_tls_version(name: str) -> Any:
    """``"TLSv1.2"`` → ``TLSVersion.TLSv1_2``; raises ValueError naming the choices."""
    try:
        return VERSIONS[name]
    except KeyError:
        choices = ", ".join(sorted(set(VERSIONS) - {"TLSv1"}))
        raise ValueError(f"unknown TLS version {name!r}; use one of {choices}") from None


@dataclass(frozen=True)
class TLSSettings:
    """Per-context TLS options, named like OpenSSL / nginx name them."""

    alpn: tuple[str, ...] = ()
    min_version: str = SECURE_MINIMUM
    max_version: str | None = None
    ciphers: str | None = None
    """An OpenSSL cipher string for TLS ≤ 1.2; None keeps Twisted's modern default list."""
    unknown_sni: str = "default"

    def __post_init__(self) -> None:
        parse_tls_version(self.min_version)
        if self.max_version is not None:
            parse_tls_version(self.max_version)
        if self.unknown_sni not in UNKNOWN_SNI_POLICIES:
            raise ValueError(f"unknown_sni must be 'default' or 'refuse', not {self.unknown_sni!r}")
        for protocol in self.alpn:
            if not protocol or len(protocol.encode("ascii", "replace")) > 255:
                raise ValueError(f"bad ALPN protocol id {protocol!r}")


@dataclass(frozen=True)
class CertifiedKey:
    """One loaded certificate chain + key and the names it serves."""

    source: str
    names: tuple[str, ...]
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: Any
    context: Any = field(default=None, compare=False)


def _names_of(cert: x509.Certificate) -> tuple[str, ...]:
    """Lower-cased SAN dNSNames, or the subject CN when there is no SAN."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = cast(x509.SubjectAlternativeName, san.value).get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in names if n))


def load_pem(cert_path: Path, key_path: Path | None = None) -> CertifiedKey:
    """Load a chain and its key from PEM; the key from ``key_path``, the same file, or ``<stem>.key``."""
    try:
        data = cert_path.read_bytes()
    except OSError as e:
        raise CertificateError(f"{cert_path}: cannot read: {e.strerror}") from None
    try:
        chain = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise CertificateError(f"{cert_path}: no PEM certificate found") from None
    if key_path is None:
        if b"PRIVATE KEY-----" in data:
            key_path, key_data = cert_path, data
        else:
            key_path = cert_path.with_suffix(".key")
            key_data = b""
    else:
        key_data = b""
    if not key_data:
        try:
            key_data = key_path.read_bytes()
        except OSError:
            raise CertificateError(
                f"{cert_path}: no private key in the file and none readable at {key_path}"
            ) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"{key_path}: cannot load the private key: {e}") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(
        encoding, public
    ):
        raise CertificateError(f"{cert_path}: the private key does not match the certificate")
    names = _names_of(leaf)
    if not names:
        raise CertificateError(f"{cert_path}: the certificate names no DNS name (SAN or CN)")
    return CertifiedKey(str(cert_path), names, leaf, chain[1:], key)


def _expand(source: CertificateSource, base_dir: Path) -> list[tuple[Path, Path | None]]:
    """The (certificate, key) paths one configured source stands for."""
    if isinstance(source, tuple):
        return [(base_dir / Path(source[0]), base_dir / Path(source[1]))]
    path = base_dir / Path(source)
    if path.is_dir():
        found: list[tuple[Path, Path | None]] = []
        for child in sorted(path.iterdir()):
            if child.name.startswith(".") or child.suffix.lower() not in PEM_SUFFIXES:
                continue
            if b"CERTIFICATE-----" in _head(child):
                found.append((child, None))
        if not found:
            raise CertificateError(f"{path}: directory holds no PEM certificate (*.pem, *.crt)")
        return found
    return [(path, None)]


def _head(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or ``*.`` standing for exactly one left-most label."""
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


class _Snapshot:
    """An immutable set of loaded certificates with their contexts and server options."""

    def __init__(self, keys: Sequence[CertifiedKey], default: CertifiedKey, settings: TLSSettings):
        self.keys = tuple(keys)
        self.default = default
        self.settings = settings
        self.exact: dict[str, CertifiedKey] = {}
        self.wildcard: dict[str, CertifiedKey] = {}
        for key in self.keys:
            for name in key.names:
                table = self.wildcard if name.startswith("*.") else self.exact
                table.setdefault(name.removeprefix("*."), key)
        self.options = _server_options(default, settings, self.context_for_server_name)

    def lookup(self, name: str | None) -> CertifiedKey | None:
        """The certificate serving ``name``: exact name first, then a one-label wildcard."""
        if not name:
            return None
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None and "." in name:
            head, rest = name.split(".", 1)
            if head:
                found = self.wildcard.get(rest)
        return found

    def context_for_server_name(self, raw: bytes | None) -> Any:
        """contextForServerName: the named context; the default's or refusal for the rest."""
        name: str | None = None
        if raw:
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError:
                name = None
        key = self.lookup(name)
        if key is not None:
            return key.context
        if raw and self.settings.unknown_sni == "refuse":
            # A safety net: TLSTarget refuses unknown names with an alert before this.
            raise CertificateError(f"no certificate for server name {name!r}")
        return self.default.context


def _server_options(
    key: CertifiedKey,
    settings: TLSSettings,
    context_for_server_name: Callable[[bytes | None], Any] | None = None,
) -> ssl.CertificateOptions:
    """CertificateOptions for ``key`` with the secure defaults and ``settings``."""
    minimum = parse_tls_version(settings.min_version)
    kwargs: dict[str, Any] = {}
    if minimum < VERSIONS[SECURE_MINIMUM]:
        kwargs["insecurelyLowerMinimumTo"] = minimum
    else:
        kwargs["raiseMinimumTo"] = minimum
    if settings.max_version is not None:
        kwargs["lowerMaximumSecurityTo"] = parse_tls_version(settings.max_version)
    if settings.ciphers:
        kwargs["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(
            settings.ciphers
        )
    if settings.alpn:
        kwargs["acceptableProtocols"] = [p.encode("ascii") for p in settings.alpn]
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key.key),
        certificate=crypto.X509.from_cryptography(key.certificate),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in key.chain] or None,
        contextForServerName=context_for_server_name,
        **kwargs,
    )
    options.getContext().set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    return options


def _with_context(key: CertifiedKey, settings: TLSSettings) -> CertifiedKey:
    """``key`` with its own per-name SSL.Context (ALPN and versions set on it too)."""
    context = _server_options(key, settings).getContext()
    return CertifiedKey(key.source, key.names, key.certificate, key.chain, key.key, context)


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore:
    """Server certificates by SNI, swappable whole on ``reload()``.

    It is itself the connection creator handed to TLSMemoryBIOFactory, so new
    connections use the current snapshot and open ones keep theirs.
    """

    def __init__(
        self,
        sources: Iterable[CertificateSource],
        default_certificate: CertificateSource | None = None,
        settings: TLSSettings = TLSSettings(),
        base_dir: PathLike = ".",
    ) -> None:
        self.sources = tuple(sources)
        self.default_source = default_certificate
        self.settings = settings
        self.base_dir = Path(base_dir)
        self.reloads = 0
        self._snapshot = self._load()

    def _load(self) -> _Snapshot:
        """Load every source; raises CertificateError on the first failure."""
        keys: list[CertifiedKey] = []
        seen: set[Path] = set()
        for source in self.sources:
            for cert_path, key_path in _expand(source, self.base_dir):
                resolved = cert_path.resolve()
                if resolved in seen:
                    continue
                seen.add(resolved)
                keys.append(_with_context(load_pem(cert_path, key_path), self.settings))
        default: CertifiedKey | None = None
        if self.default_source is not None:
            pairs = _expand(self.default_source, self.base_dir)
            wanted = pairs[0][0].resolve()
            for key in keys:
                if Path(key.source).resolve() == wanted:
                    default = key
            if default is None:
                default = _with_context(load_pem(*pairs[0]), self.settings)
                keys.insert(0, default)
        if not keys:
            raise CertificateError("no certificates configured")
        return _Snapshot(keys, default or keys[0], self.settings)

    @property
    def keys(self) -> tuple[CertifiedKey, ...]:
        return self._snapshot.keys

    @property
    def default(self) -> CertifiedKey:
        return self._snapshot.default

    @property
    def options(self) -> ssl.CertificateOptions:
        """The current server CertificateOptions (default certificate + SNI hook)."""
        return self._snapshot.options

    def lookup(self, name: str | None) -> CertifiedKey | None:
        """The certificate for server name ``name``, or None when no name matches."""
        return self._snapshot.lookup(name)

    def refuses(self, name: str | None) -> bool:
        """True when the policy refuses a ClientHello naming ``name``."""
        return bool(name) and self.settings.unknown_sni == "refuse" and self.lookup(name) is None

    def names(self) -> tuple[str, ...]:
        """Every served name, in load order."""
        return tuple(n for key in self._snapshot.keys for n in key.names)

    def reload(self) -> bool:
        """Re-read every certificate; swap only if all load. Returns True on success."""
        try:
            snapshot = self._load()
        except (CertificateError, SSL.Error, ValueError) as e:
            log.error(
                "TLS certificates not reloaded, keeping the old ones: {error}", error=str(e)
            )
            return False
        self._snapshot = snapshot
        self.reloads += 1
        log.info(
            "TLS certificates reloaded: {count} certificate(s) for {names}",
            count=len(snapshot.keys),
            names=", ".join(self.names()),
        )
        return True

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A server SSL.Connection on the current snapshot's default context."""
        return self._snapshot.options.serverConnectionForTLS(tlsProtocol)


# -- client side: re-encryption to a backend -----------------------------------


class BackendTLSError(ConnectionError):
    """The backend's TLS handshake failed: untrusted or wrong-name certificate, or no TLS."""


def _split_endpoint(description: str) -> list[str]:
    """Split an endpoint string on unescaped colons (``\\:`` escapes, as Twisted's)."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


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

    Other strings go to Twisted's ``clientFromString`` unchanged (``ca``,
    ``client_cert`` and ``server_name`` then raise ValueError).
    """
    from twisted.internet.endpoints import clientFromString

    if not is_tls_endpoint(description):
        if ca is not None or client_cert is not None or server_name is not None:
            raise ValueError(
                f"ca, client_cert and server_name need a tls: endpoint, not {description!r}"
            )
        return clientFromString(reactor, description)  # type: ignore[no-any-return]
    args = _split_endpoint(description)[1:]
    positional = [a for a in args if "=" not in a]
    keywords = dict(a.split("=", 1) for a in args if "=" in a)
    if len(positional) != 2:
        raise ValueError(f"expected tls:HOST:PORT, got {description!r}")
    host, port_text = positional
    try:
        port = int(port_text)
        timeout = float(keywords.pop("timeout", timeout))
    except ValueError:
        raise ValueError(f"bad port or timeout in {description!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {description!r}")
    ca = keywords.pop("ca", None) if ca is None else ca
    server_name = keywords.pop("server_name", None) if server_name is None else server_name
    if keywords:
        raise ValueError(f"unknown option(s) {', '.join(sorted(keywords))} in {description!r}")
    name = server_name or host
    creator = client_tls_options(name, ca=ca, client_cert=client_cert, base_dir=base_dir)
    endpoint = VerifiedTLSEndpoint(reactor, _ClientTLS(host, port, timeout, name, creator))
    return cast(IStreamClientEndpoint, endpoint)


def client_endpoint_from_config(
    ctx: Any, key: str, item: str, options: dict[str, Any]
) -> IStreamClientEndpoint | None:
    """The proxy table's hook: ``item`` with ``ca``/``client_cert``/``server_name``; problems on ctx."""
    for name, value in options.items():
        if name == "client_cert" and isinstance(value, dict):
            cert, private = value.get("cert"), value.get("key")
            if isinstance(cert, str) and (private is None or isinstance(private, str)):
                options[name] = (cert, private) if private else cert
                continue
        if not isinstance(value, str):
            ctx.problem(f"{getattr(ctx, 'target_key', 'proxy')}.{name}", "must be a string")
            return None
    try:
        return client_endpoint(ctx.reactor, item, base_dir=ctx.base_dir, **options)
    except (CertificateError, ValueError) as e:
        ctx.problem(key, str(e))
    except Exception as e:  # noqa: BLE001  # endpoint parsers raise many kinds of errors
        ctx.problem(key, f"unparsable client endpoint {item!r}: {e}")
    return None


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
                waiter.transport.abortConnection()

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
        owner = self.owner
        if owner.done.called:  # timed out meanwhile
            tls.abortConnection()  # type: ignore[union-attr]
            return
        protocol = owner.wrapped.buildProtocol(self.addr)  # type: ignore[call-arg,misc]  # zope
        if protocol is None:
            tls.loseConnection()  # type: ignore[union-attr,misc]  # zope: no self
            owner.done.errback(ConnectionRefusedError("factory declined the connection"))
            return
        tls.wrappedProtocol = protocol  # type: ignore[union-attr]
        protocol.makeConnection(tls)  # type: ignore[call-arg,misc]  # zope: no self
        if self.pending:
            protocol.dataReceived(self.pending)  # type: ignore[call-arg,misc]  # zope: no self
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
