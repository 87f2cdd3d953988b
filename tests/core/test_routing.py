"""Route matching: host/SNI patterns, path prefixes, networks, order, default and silent."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portmux.core.preamble import Preamble
from portmux.core.routing import (
    Match,
    Route,
    Router,
    host_pattern_matches,
    parse_networks,
    path_prefix_matches,
)


class PatternTests(SynchronousTestCase):
    def test_exact_host(self) -> None:
        self.assertTrue(host_pattern_matches("a.example.com", "a.example.com"))
        self.assertFalse(host_pattern_matches("a.example.com", "b.example.com"))
        self.assertFalse(host_pattern_matches("a.example.com", None))

    def test_wildcard_matches_any_depth_but_not_the_apex(self) -> None:
        self.assertTrue(host_pattern_matches("*.example.com", "a.example.com"))
        self.assertTrue(host_pattern_matches("*.example.com", "x.y.example.com"))
        self.assertFalse(host_pattern_matches("*.example.com", "example.com"))
        self.assertFalse(host_pattern_matches("*.example.com", "badexample.com"))
        self.assertTrue(host_pattern_matches("*", "anything"))

    def test_match_normalizes_case_and_trailing_dot(self) -> None:
        match = Match(sni="API.Example.COM.")
        self.assertTrue(match.accepts(Preamble("tls", sni="api.example.com")))

    def test_path_prefix_on_segment_boundaries(self) -> None:
        self.assertTrue(path_prefix_matches("/app/", "/app/x"))
        self.assertTrue(path_prefix_matches("/app/", "/app"))
        self.assertTrue(path_prefix_matches("/app", "/app/"))
        self.assertFalse(path_prefix_matches("/app/", "/application"))
        self.assertTrue(path_prefix_matches("/", "/anything"))
        self.assertFalse(path_prefix_matches("/app/", None))


class MatchTests(SynchronousTestCase):
    def test_unset_fields_match_anything(self) -> None:
        self.assertTrue(Match().accepts(Preamble("ssh")))

    def test_every_set_field_must_accept(self) -> None:
        match = Match(protocol="tls", sni="a.example", alpn="h2")
        self.assertTrue(match.accepts(Preamble("tls", sni="a.example", alpn=("h2", "http/1.1"))))
        self.assertFalse(match.accepts(Preamble("tls", sni="a.example", alpn=("http/1.1",))))
        self.assertFalse(match.accepts(Preamble("http", sni="a.example", alpn=("h2",))))

    def test_network(self) -> None:
        match = Match(network=parse_networks(["127.0.0.0/8", "::1"]))
        self.assertTrue(match.accepts(Preamble("ssh"), "127.0.0.5"))
        self.assertTrue(match.accepts(Preamble("ssh"), "::1"))
        self.assertTrue(match.accepts(Preamble("ssh"), "::ffff:127.0.0.1"))
        self.assertFalse(match.accepts(Preamble("ssh"), "10.1.2.3"))
        self.assertFalse(match.accepts(Preamble("ssh"), ""))

    def test_service_is_case_insensitive(self) -> None:
        self.assertTrue(Match(service="Echo").accepts(Preamble("tcpmux", service="echo")))

    def test_describe(self) -> None:
        self.assertEqual(Match(protocol="http", host="a.example").describe(),
                         "protocol=http host=a.example")
        self.assertEqual(Match().describe(), "any")
        self.assertEqual(Match(default=True).describe(), "default")


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.first = Route("first", Match(protocol="http", host="a.example"), "t1")
        self.second = Route("second", Match(protocol="http"), "t2")
        self.shadowed = Route("shadowed", Match(protocol="http", host="a.example"), "t3")
        self.default = Route("rest", Match(default=True), "t4")
        self.silent = Route("smtp", Match(silent=True), "t5")

    def test_first_match_wins(self) -> None:
        router = Router([self.first, self.second, self.shadowed])
        self.assertIs(router.select(Preamble("http", host="a.example")), self.first)
        self.assertIs(router.select(Preamble("http", host="b.example")), self.second)

    def test_default_only_when_nothing_else_matches(self) -> None:
        router = Router([self.default, self.first])
        self.assertIs(router.select(Preamble("http", host="a.example")), self.first)
        self.assertIs(router.select(Preamble("ssh")), self.default)
        self.assertIsNone(Router([self.first]).select(Preamble("ssh")))

    def test_silent_route_is_not_used_for_data(self) -> None:
        router = Router([self.silent])
        self.assertIsNone(router.select(Preamble("ssh")))
        self.assertIs(router.select_silent("127.0.0.1"), self.silent)
        self.assertIs(router.silent_route, self.silent)

    def test_without_and_with(self) -> None:
        router = Router([self.first, self.second]).without(["first"]).with_route(self.default)
        self.assertEqual([r.name for r in router.routes], ["second", "rest"])

    def test_targets_are_distinct_in_order(self) -> None:
        shared = object()
        router = Router([Route("a", Match(), shared), Route("b", Match(), shared),
                         Route("c", Match(), "x")])
        self.assertEqual(router.targets(), (shared, "x"))
