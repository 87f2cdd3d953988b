# -*- test-case-name: tests.tls.test_certificates -*-
"""The server certificate store: PEM files or directories, SNI selection, ALPN, reload.

PEM files or directories are loaded into one immutable snapshot of per-name
OpenSSL contexts; Twisted's public ``CertificateOptions(contextForServerName=)``
hook on the store's *front* context picks one per ClientHello. ``reload()`` builds
a whole new snapshot and swaps it only if every certificate loaded. The front
context outlives reloads: it holds the session cache and the session-ticket keys
(see ``portmux.tls._sessions``).
"""

import hashlib
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
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from portmux.tls import _alpn

log = Logger(namespace="portmux")

__all__ = [
    "CertificateError",
    "CertificateSource",
    "CertificateStore",
    "CertifiedKey",
    "TLSSettings",
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
DEFAULT_SESSION_LIFETIME = 3600
"""Seconds a TLS session (cache entry or ticket) stays resumable; ticket keys rotate as often."""

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

    alpn: tuple[str, ...] | None = None
    """ALPN ids to negotiate; None: what the inner routes serve (see targets.tls); (): none."""
    alpn_mismatch: str = "continue"
    """No ALPN id in common: "continue" without ALPN, or "refuse" (alert 120)."""
    min_version: str = SECURE_MINIMUM
    max_version: str | None = None
    ciphers: str | None = None
    """An OpenSSL cipher string for TLS ≤ 1.2; None keeps Twisted's modern default list."""
    unknown_sni: str = "default"
    session_lifetime: int = DEFAULT_SESSION_LIFETIME
    """Seconds a session is resumable and between ticket-key rotations; 0: no resumption."""

    def __post_init__(self) -> None:
        parse_tls_version(self.min_version)
        if self.max_version is not None:
            parse_tls_version(self.max_version)
        if self.unknown_sni not in UNKNOWN_SNI_POLICIES:
            raise ValueError(f"unknown_sni must be 'default' or 'refuse', not {self.unknown_sni!r}")
        if self.alpn_mismatch not in _alpn.ALPN_MISMATCH_POLICIES:
            raise ValueError(
                f"alpn_mismatch must be 'continue' or 'refuse', not {self.alpn_mismatch!r}"
            )
        if self.session_lifetime < 0:
            raise ValueError(f"session_lifetime must be >= 0, not {self.session_lifetime!r}")
        for protocol in self.alpn or ():
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
    """An immutable set of loaded certificates with their per-name contexts."""

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
    key: CertifiedKey | None,
    settings: TLSSettings,
    session_id: bytes,
    context_for_server_name: Callable[[bytes | None], Any] | None = None,
) -> ssl.CertificateOptions:
    """CertificateOptions with the secure defaults and ``settings``, serving ``key`` if given.

    Every context of a store shares ``session_id`` (OpenSSL resumes a session only
    under the context id it was made under) and portmux's ALPN selection.
    """
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
    if key is not None:
        kwargs["privateKey"] = crypto.PKey.from_cryptography_key(key.key)
        kwargs["certificate"] = crypto.X509.from_cryptography(key.certificate)
        kwargs["extraCertChain"] = [crypto.X509.from_cryptography(c) for c in key.chain] or None
    resumable = settings.session_lifetime > 0
    options = ssl.CertificateOptions(
        contextForServerName=context_for_server_name,
        enableSessions=resumable,
        enableSessionTickets=resumable,
        **kwargs,
    )
    context = options.getContext()
    context.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    context.set_session_id(session_id)
    if resumable:
        context.set_timeout(settings.session_lifetime)
    _alpn.install(context, settings.alpn, settings.alpn_mismatch)
    return options


def _with_context(key: CertifiedKey, settings: TLSSettings, session_id: bytes) -> CertifiedKey:
    """``key`` with its own per-name SSL.Context (ALPN and versions set on it too)."""
    context = _server_options(key, settings, session_id).getContext()
    return CertifiedKey(key.source, key.names, key.certificate, key.chain, key.key, context)


def _session_id(sources: Sequence[Any], base_dir: Path) -> bytes:
    """A session id context that is the same for a store across reloads and rotations."""
    text = repr((str(base_dir.resolve()), [str(s) for s in sources])).encode("utf-8")
    return hashlib.sha256(b"portmux-tls-session:" + text).digest()


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore:
    """Server certificates by SNI, swappable whole on ``reload()``.

    It is itself the connection creator handed to TLSMemoryBIOFactory: every
    connection starts on the store's *front* context (session cache and ticket
    keys, kept across reloads, renewed by ``rotate_session_keys()``), whose SNI hook
    switches it to the current snapshot's context for the name.
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
        self.rotations = 0
        self._session_id = _session_id(
            [*self.sources, default_certificate], self.base_dir
        )
        self._snapshot = self._load()
        self._front = self._make_front()

    def _load(self) -> _Snapshot:
        """Load every source; raises CertificateError on the first failure."""
        keys: list[CertifiedKey] = []
        seen: set[Path] = set()
        settings, session_id = self.settings, self._session_id
        for source in self.sources:
            for cert_path, key_path in _expand(source, self.base_dir):
                resolved = cert_path.resolve()
                if resolved in seen:
                    continue
                seen.add(resolved)
                keys.append(_with_context(load_pem(cert_path, key_path), settings, session_id))
        default: CertifiedKey | None = None
        if self.default_source is not None:
            pairs = _expand(self.default_source, self.base_dir)
            wanted = pairs[0][0].resolve()
            for key in keys:
                if Path(key.source).resolve() == wanted:
                    default = key
            if default is None:
                default = _with_context(load_pem(*pairs[0]), settings, session_id)
                keys.insert(0, default)
        if not keys:
            raise CertificateError("no certificates configured")
        return _Snapshot(keys, default or keys[0], settings)

    def _make_front(self) -> ssl.CertificateOptions:
        """A new front context: a fresh session cache and fresh random ticket keys."""
        return _server_options(None, self.settings, self._session_id, self._context_for_server_name)

    def _context_for_server_name(self, raw: bytes | None) -> Any:
        return self._snapshot.context_for_server_name(raw)

    @property
    def keys(self) -> tuple[CertifiedKey, ...]:
        return self._snapshot.keys

    @property
    def default(self) -> CertifiedKey:
        return self._snapshot.default

    @property
    def options(self) -> ssl.CertificateOptions:
        """The current front CertificateOptions (SNI hook, session cache, ticket keys)."""
        return self._front

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
        """Re-read every certificate; swap only if all load. Returns True on success.

        Sessions stay resumable: the front context (cache, ticket keys) is kept.
        """
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

    def rotate_session_keys(self) -> None:
        """New session-ticket keys and an empty session cache for new handshakes.

        OpenSSL's public API keeps one ticket key per context and pyOpenSSL cannot set
        it, so rotating means a new front context: tickets issued before end with it
        (those clients make one full handshake and get a new ticket).
        """
        self._front = self._make_front()
        self.rotations += 1

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A server SSL.Connection on the front context (SNI then picks the certificate).

        Built straight on the context: CertificateOptions' own method would also look
        up the wrapped factory's ALPN list for ``set_alpn_protos``, which only a
        client sends (the server's choice is the context's ALPN callback).
        """
        return SSL.Connection(self._front.getContext())
