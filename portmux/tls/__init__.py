# -*- test-case-name: tests.targets.test_tls,tests.targets.test_tls_proxy,tests.test_layers,tests.tls.test_certificates -*-
"""TLS for portmux: the server certificate store and client (re-encryption) contexts.

``CertificateStore`` serves SNI-selected certificates for termination, reloads
them atomically and keeps TLS sessions resumable (cache and rotated tickets); its
ALPN selection (``_alpn``) fails a handshake only when told to. ``client_endpoint``
dials a backend over verified TLS. The TLS termination *target* is ``portmux.targets.tls``; the ClientHello probe is
``portmux.protocols.tls``.
"""

from portmux.tls._alpn import ALPN_MISMATCH_POLICIES, IALPNOffer, NoCommonProtocol
from portmux.tls._certificates import (
    CertificateError,
    CertificateSource,
    CertificateStore,
    CertifiedKey,
    TLSSettings,
    load_pem,
    parse_tls_version,
)
from portmux.tls._client import (
    BackendTLSError,
    VerifiedTLSEndpoint,
    client_endpoint,
    client_tls_options,
    is_tls_endpoint,
)

__all__ = [
    "ALPN_MISMATCH_POLICIES",
    "BackendTLSError",
    "CertificateError",
    "CertificateSource",
    "CertificateStore",
    "CertifiedKey",
    "IALPNOffer",
    "NoCommonProtocol",
    "TLSSettings",
    "VerifiedTLSEndpoint",
    "client_endpoint",
    "client_tls_options",
    "is_tls_endpoint",
    "load_pem",
    "parse_tls_version",
]
