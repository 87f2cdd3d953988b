"""Per-request dispatch over HTTP/2 inside TLS still sees the connection's SNI."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.targets import test_tls
from tests.targets.test_tls_support import in_thread


class H2DispatchTests(TestCase):
    unknown_sni = "default"
    setUp = test_tls.TerminationTests.setUp

    @inlineCallbacks
    def test_two_h2_streams_on_one_connection_match_on_sni(self) -> Any:
        try:
            import httpx
        except ImportError:
            self.skipTest("httpx is not installed")
        ca, port = str(self.pki.ca_file), self.port

        def fetch() -> list[tuple[str, bytes]]:
            transport = httpx.HTTPTransport(http2=True, verify=ca)
            with httpx.Client(transport=transport, http1=False, http2=True, timeout=8) as client:
                results = []
                for path in ("/hello", "/hello"):
                    response = client.get(
                        f"https://127.0.0.1:{port}{path}",
                        headers={"Host": "default.example.com"},
                        extensions={"sni_hostname": "default.example.com"},
                    )
                    results.append((response.http_version, response.content))
                return results

        results = yield in_thread(fetch)
        # "site default" is only chosen when the per-request match sees the outer SNI;
        # a lookup miss would fall through to the "nosni" route ("no name").
        self.assertEqual(results, [("HTTP/2", b"site default\n")] * 2)
