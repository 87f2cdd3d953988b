"""h2c (HTTP/2 prior knowledge) to in-process resources: served over HTTP/2, verified with curl."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.targets.resource import ResourceTarget
from tests.targets.test_tls_support import in_thread, need, reactor, run, site_root, wait_closed


class PriorKnowledgeTests(TestCase):
    """One port, resource routes for h2c and HTTP/1.1; curl speaks each."""

    def setUp(self) -> Any:
        self.mux = Multiplexer(reactor)
        self.mux.add_route(ResourceTarget(site_root(b"over h2c\n")), name="h2c", protocol="h2c")
        self.mux.add_route(ResourceTarget(site_root(b"over http/1\n")), name="web", protocol="http")
        port = reactor.listenTCP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_closed, self.mux, "h2c")
        self.port = port.getHost().port

    def curl(self, *args: str, path: str = "/hello") -> Any:
        return in_thread(
            run,
            ["curl", "-sS", "--max-time", "8", "-w", "\n%{http_version} %{response_code}",
             *args, f"http://127.0.0.1:{self.port}{path}"],
        )

    @inlineCallbacks
    def test_curl_prior_knowledge_is_served_over_http2(self) -> Any:
        if need("curl"):
            self.skipTest(need("curl"))
        result = yield self.curl("--http2-prior-knowledge")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"over h2c\n\n2 200")
        self.assertEqual(self.mux.stats.routes["h2c"].connections, 1)

    @inlineCallbacks
    def test_two_streams_on_one_connection(self) -> Any:
        """nghttp sends two requests as two streams of one h2c connection; both are answered.

        (curl 7.88 cannot reuse a prior-knowledge connection, whatever the server: it
        fails the second URL with "Error in the HTTP2 framing layer" against nghttpd too.)
        """
        if need("nghttp"):
            self.skipTest(need("nghttp"))
        url = f"http://127.0.0.1:{self.port}"
        result = yield in_thread(run, ["nghttp", "-t", "8", f"{url}/hello", f"{url}/"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"over h2c\n" * 2)
        self.assertEqual(self.mux.stats.routes["h2c"].connections, 1)

    @inlineCallbacks
    def test_http1_on_the_same_port_is_unchanged(self) -> Any:
        if need("curl"):
            self.skipTest(need("curl"))
        result = yield self.curl("--http1.1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"over http/1\n\n1.1 200")

    @inlineCallbacks
    def test_without_http2_support_the_client_gets_a_goaway(self) -> Any:
        """No h2 extra: a clear HTTP/2 refusal (GOAWAY), one log line, not an HTTP/1.1 400."""
        if need("curl"):
            self.skipTest(need("curl"))
        route = next(r for r in self.mux.router.routes if r.name == "h2c")
        route.target.h2_enabled = False  # as without the h2 extra
        result = yield self.curl("--http2-prior-knowledge")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn(b"400", result.stdout)
        self.assertEqual(self.mux.stats.routes["h2c"].refused, 1)
