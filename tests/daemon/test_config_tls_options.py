"""The TLS table's ALPN and session keys: defaults, choices, and what they build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.test_config import LISTEN, one_error, parse


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A directory holding server.pem (chain + key), made with trustme."""
    import trustme

    cert = trustme.CA().issue_cert("a.example.com")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    return tmp_path

TLS = '[[route]]\nname = "https"\nmatch = { protocol = "tls" }\n[route.tls]\ncertificates = ["server.pem"]\n'


def test_defaults_automatic_alpn_continue_on_mismatch_one_hour_sessions(certs: Path) -> None:
    settings = parse(LISTEN + TLS, base_dir=certs).routes[0].target.store.settings
    assert settings.alpn is None  # what the inner routes serve
    assert settings.alpn_mismatch == "continue"
    assert settings.session_lifetime == 3600


def test_empty_alpn_means_none_and_options_are_read(certs: Path) -> None:
    text = LISTEN + TLS + 'alpn = []\nalpn_mismatch = "refuse"\nsession_lifetime = 0\n'
    settings = parse(text, base_dir=certs).routes[0].target.store.settings
    assert (settings.alpn, settings.alpn_mismatch, settings.session_lifetime) == ((), "refuse", 0)


def test_bad_alpn_mismatch_and_lifetime_reported_at_their_keys(certs: Path) -> None:
    error = one_error(LISTEN + TLS + 'alpn_mismatch = "ignore"\n', base_dir=certs)
    assert error.key_path == "route[0].tls.alpn_mismatch"
    assert error.message == 'expected "continue" or "refuse", got "ignore"'
    error = one_error(LISTEN + TLS + "session_lifetime = -5\n", base_dir=certs)
    assert error.key_path == "route[0].tls.session_lifetime"
    assert "-5" in error.message


def test_h2c_resource_route_without_http2_support_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """portmux check names the reason instead of answering h2c clients with a GOAWAY."""
    from portmux.targets.resource import ResourceTarget

    text = (
        LISTEN
        + '[[route]]\nname = "grpc"\nmatch = { protocol = "h2c" }\n'
        + 'resource = "twisted.web.resource:Resource"\n'
    )
    parse(text)  # accepted while the h2 extra is installed
    monkeypatch.setattr(ResourceTarget, "h2_enabled", False)
    error = one_error(text)
    assert error.key_path == "route[0].match"
    assert "install the h2 extra" in error.message
