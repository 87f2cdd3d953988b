# -*- test-case-name: tests.daemon.test_config -*-
"""The ``tls`` (termination) target's table: certificates, ALPN, versions, ciphers, inner routes.

Each certificate source is loaded on its own and each option checked on its own, so
every problem is reported at its key: ``tls.certificates[1]``, ``tls.ciphers`` …
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portmux.daemon.config._context import BuildContext
from portmux.daemon.config._problems import one_line
from portmux.daemon.config._schema import (
    INVALID,
    AnyOf,
    ListOf,
    OneOf,
    Routes,
    TableOf,
    Text,
    Walk,
    Whole,
    setting,
)

__all__ = ["TLS_VALUE", "CertificatePair", "TLSTable", "build_tls"]


@dataclass(frozen=True)
class CertificatePair:
    """``{ cert = "...", key = "..." }``: a certificate chain and its key in separate files."""

    cert: str = setting(Text("a path"), "the PEM certificate chain's path")
    key: str | None = setting(Text("a path"), "the PEM private key's path (default: beside the chain)", default=None)

    def validate(self, key_path: str, walk: Walk) -> Any:
        return self.cert if self.key is None else (self.cert, self.key)


def _loads(source: Any, key_path: str, walk: Walk) -> Any:
    """A certificate source whose files load (read now, again when the store is built)."""
    from portmux.tls import CertificateError, CertificateStore

    try:
        CertificateStore([source], base_dir=walk.base_dir)
    except (CertificateError, ValueError) as e:
        walk.problem(key_path, str(e))
        return INVALID
    return source


_SOURCE = AnyOf(
    'a path or a table { cert = "...", key = "..." }',
    choices=(Text("a path"), TableOf(declaration=CertificatePair)),
    check=_loads,
)


def _tls_version(value: str, key_path: str, walk: Walk) -> Any:
    from portmux.tls import parse_tls_version

    try:
        parse_tls_version(value)
    except ValueError as e:
        walk.problem(key_path, str(e))
        return INVALID
    return value


def _alpn_id(value: str, key_path: str, walk: Walk) -> Any:
    if not value or len(value.encode("ascii", "replace")) > 255:
        walk.problem(key_path, f"bad ALPN protocol id {value!r}: 1 to 255 bytes")
        return INVALID
    return value


def _lifetime(value: int, key_path: str, walk: Walk) -> Any:
    """Whole seconds, 0 (no resumption) or more; OpenSSL keeps session timeouts in 32 bits."""
    if not 0 <= value <= 2**31 - 1:
        walk.problem(key_path, f"must be 0 (no resumption) or a number of seconds, got {value}")
        return INVALID
    return value


def _cipher_string(value: str, key_path: str, walk: Walk) -> Any:
    """An OpenSSL cipher string that selects at least one cipher."""
    from OpenSSL import SSL

    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(value.encode("ascii"))
    except (SSL.Error, UnicodeError):
        walk.problem(key_path, f'OpenSSL matches no cipher in {value!r}; e.g. "ECDHE+AESGCM"')
        return INVALID
    return value


@dataclass(frozen=True)
class TLSTable:
    """``[route.tls]``: terminate TLS with SNI-chosen certificates, then route the plaintext."""

    certificates: tuple[Any, ...] = setting(
        ListOf("an array of paths or { cert, key } tables", item=_SOURCE, single=True,
               empty="must not be empty: list PEM files or directories of them"),
        "PEM files, directories of them, or { cert, key } tables; chosen by SNI",
        missing="missing: PEM files or directories of them",
    )
    default_certificate: Any = setting(_SOURCE, "for hellos without SNI or with an unknown name", default=None)
    unknown_sni: str | None = setting(OneOf("default", "refuse"), "what a name no certificate covers gets", default=None)
    alpn: tuple[str, ...] | None = setting(
        ListOf("an array of ALPN protocol ids", item=Text("an ALPN protocol id", check=_alpn_id), single=True),
        "ALPN protocols to negotiate, e.g. [\"h2\", \"http/1.1\"]; "
        "default: what the inner routes serve ([] for none)",
        default=None,
    )
    alpn_mismatch: str | None = setting(
        OneOf("continue", "refuse"),
        "no ALPN id in common: carry on without ALPN, or refuse (alert 120)",
        default=None,
    )
    session_lifetime: int | None = setting(
        Whole(check=_lifetime),
        "seconds a TLS session stays resumable; ticket keys rotate as often; 0 turns resumption off",
        default=None,
    )
    min_version: str | None = setting(Text("a TLS version", check=_tls_version), "lowest TLS version", default=None)
    max_version: str | None = setting(Text("a TLS version", check=_tls_version), "highest TLS version", default=None)
    ciphers: str | None = setting(
        Text("an OpenSSL cipher string", check=_cipher_string), "TLS <= 1.2 ciphers", default=None
    )
    route: tuple[Any, ...] = setting(
        Routes("an array of tables ([[route.tls.route]])"), "routes for the decrypted stream", default=()
    )


TLS_VALUE = TableOf(declaration=TLSTable)


def build_tls(table: TLSTable, ctx: BuildContext) -> object | None:
    """A TLSTarget: one CertificateStore, and the inner routes built with the file's sniff settings."""
    from portmux.targets.tls import TLSTarget
    from portmux.tls import CertificateStore, TLSSettings

    options: dict[str, Any] = {"alpn": table.alpn}
    for name in ("unknown_sni", "min_version", "max_version", "ciphers", "alpn_mismatch", "session_lifetime"):
        if getattr(table, name) is not None:
            options[name] = getattr(table, name)
    routes = ctx.build_routes(table.route)
    try:
        store = CertificateStore(
            table.certificates, table.default_certificate, TLSSettings(**options), base_dir=ctx.base_dir
        )
    except Exception as e:  # noqa: BLE001 - OpenSSL rejecting a combination of options
        ctx.problem(ctx.target_key, f"cannot build the TLS context: {one_line(e)}")
        return None
    return TLSTarget(ctx.reactor, store, routes, probes=ctx.probes, settings=ctx.sniff_settings)
