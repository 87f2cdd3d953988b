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
        match = Match(network=parse_networks(["127.0.0.0/16", "::1"]))
        self.assertTrue(match.accepts(Preamble("ssh"), "127.0.0.5"))
        self.assertTrue(match.accepts(Preamble("ssh"), "::1"))
        self.assertTrue(match.accepts(Preamble("ssh"), "::ffff:127.0.0.1"))
        self.assertFalse(match.accepts(Preamble("ssh"), "127.129.2.3"))
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


class OneIndexTests(SynchronousTestCase):
    """Registered routes (first) and static routes (after) share the Router's indexes."""

    def route(self, name: str, **match: str) -> Route:
        return Route(name, Match(**match), name)

    def pick(self, router: Router, preamble: Preamble) -> str | None:
        chosen = router.select(preamble)
        return None if chosen is None else chosen.name

    def test_nmf_strong_static_beats_weak_registered_and_longest_prefix_spans_both(self) -> None:
        registered = [
            self.route("reg-weak-deep", protocol="nmf", via="net.tcp://*/app/deep/"),
            self.route("reg-shop-cart", protocol="nmf", via="net.tcp://+/shop/cart/"),
            self.route("reg-shop", protocol="nmf", via="net.tcp://+/shop/"),
        ]
        static = [
            self.route("static-app", protocol="nmf", via="net.tcp://+/app/"),
            self.route("static-shop-cart-items", protocol="nmf", via="net.tcp://+/shop/cart/items/"),
            self.route("static-weak", protocol="nmf", via="net.tcp://*/"),
        ]
        router = Router(registered + static)

        def via(path: str) -> str | None:
            return self.pick(router, Preamble("nmf", via=f"net.tcp://h.example{path}"))

        self.assertEqual(via("/app/deep/svc"), "static-app")  # strong beats a longer weak prefix
        self.assertEqual(via("/shop/cart/svc"), "reg-shop-cart")
        self.assertEqual(via("/shop/cart/items/svc"), "static-shop-cart-items")  # longest, static
        self.assertEqual(via("/shop/other"), "reg-shop")
        self.assertEqual(via("/elsewhere"), "static-weak")

    def test_unversioned_service_gets_the_newest_across_static_and_registered(self) -> None:
        registered = [self.route("reg-2", protocol="tcpmux", service="orders/2")]
        static = [self.route("static-3", protocol="tcpmux", service="orders/3"),
                  self.route("static-1", protocol="tcpmux", service="orders/1")]
        router = Router(registered + static)
        self.assertEqual(self.pick(router, Preamble("tcpmux", service="orders")), "static-3")
        self.assertEqual(self.pick(router, Preamble("tcpmux", service="orders/2")), "reg-2")
        newer = Router([self.route("reg-4", protocol="tcpmux", service="orders/4")] + static)
        self.assertEqual(self.pick(newer, Preamble("tcpmux", service="orders")), "reg-4")
        self.assertEqual(router.refusal_reason(Preamble("tcpmux", service="orders/9")),
                         "service 'orders' has no version 9 (registered: 1, 2, 3)")

    def test_namespace_pattern_takes_every_name_in_its_namespace(self) -> None:
        router = Router([self.route("alice-2", service="alice:db/2"),
                         self.route("alice-any", service="alice:*")])
        self.assertEqual(self.pick(router, Preamble("tcpmux", service="alice:db")), "alice-2")
        self.assertEqual(self.pick(router, Preamble("tcpmux", service="alice:mail/3")), "alice-any")
        self.assertIsNone(self.pick(router, Preamble("tcpmux", service="bob:mail")))


class CoversTests(SynchronousTestCase):
    """Match.covers: is one registration inside a reservation's space?"""

    def test_address_keys_must_lie_inside(self) -> None:
        self.assertTrue(Match(host="*.example.com").covers(Match(host="*.a.example.com")))
        self.assertFalse(Match(host="*.example.com").covers(Match(host="*")))
        self.assertFalse(Match(host="example.com").covers(Match(path="/")))
        self.assertTrue(Match(path="/admin").covers(Match(host="x", path="/admin/users")))
        self.assertTrue(Match(via="net.tcp://+/secure/").covers(Match(via="net.tcp://h/secure/x/")))
        self.assertFalse(Match(via="net.tcp://h/secure/").covers(Match(via="net.tcp://+/secure/")))
        self.assertTrue(Match(service="orders").covers(Match(service="orders/3")))

    def test_qualifiers_must_not_contradict(self) -> None:
        self.assertTrue(Match(protocol="tcpmux", service="db").covers(Match(service="db")))
        self.assertFalse(Match(protocol="tcpmux", service="db").covers(Match(protocol="h2c", service="db")))
        lan, wan = parse_networks(["127.128.0.0/9"]), parse_networks(["127.64.2.0/24"])
        self.assertFalse(Match(host="a", network=lan).covers(Match(host="a", network=wan)))
        self.assertTrue(Match(host="a", network=lan).covers(Match(host="a")))

    def test_canonical_spelling(self) -> None:
        self.assertEqual(Match(protocol="HTTP", host="A.Example.", service="Alice:DB/2.0",
                               via="NET.TCP://+/App").canonical(),
                         Match(protocol="http", host="a.example", service="alice:db/2",
                               via="net.tcp://+/app/"))
        self.assertEqual(Match(host="a", network=parse_networks(["::1"])).to_keys(),
                         {"host": "a", "network": ["::1/128"]})
