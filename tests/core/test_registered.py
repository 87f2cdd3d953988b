"""The registered layer: incremental add/remove picks exactly what a whole rebuild picks."""

from __future__ import annotations

import random

from portmux.core.preamble import Preamble
from portmux.core.registered import RegisteredLayer, specificity
from portmux.core.routing import Match, Route, Router, parse_networks

HOSTS = ["a.example", "b.example", "x.a.example", "*.example", "*.a.example", "*"]
PATHS = ["/", "/api", "/api/v1", "/api/v1/", "/apix", "/b"]
SERVICES = ["orders", "orders/1", "orders/2", "orders/1.5", "alice:mail", "alice:mail/3", "alice:*", "Pay"]
VIAS = ["net.tcp://+/app/", "net.tcp://h.example/app/", "net.tcp://*/app/", "net.tcp://+/app/deep/",
        "net.tcp://h.example/app/deep/", "net.tcp://*/", "net.tcp://h.example:9/app/"]
SNIS = ["a.example", "*.example", "*"]


def random_match(rng: random.Random) -> Match:
    """A registration-shaped match: one address family, sometimes a protocol/ALPN/network."""
    family = rng.choice(["http", "http", "tls", "tcpmux", "nmf"])
    network = parse_networks([rng.choice(["127.128.0.0/9", "127.0.0.0/8"])]) if rng.random() < 0.15 else ()
    if family == "http":
        return Match(protocol=rng.choice(["http", None]), host=rng.choice(HOSTS + [None]),
                     path=rng.choice(PATHS + [None]) if rng.random() < 0.9 else "/", network=network)
    if family == "tls":
        return Match(protocol="tls", sni=rng.choice(SNIS), alpn=rng.choice([None, "h2"]), network=network)
    if family == "tcpmux":
        return Match(protocol=rng.choice(["tcpmux", None]), service=rng.choice(SERVICES), network=network)
    return Match(protocol="nmf", via=rng.choice(VIAS), network=network)


def random_preamble(rng: random.Random) -> Preamble:
    kind = rng.choice(["http", "tls", "tcpmux", "nmf"])
    if kind == "http":
        return Preamble("http", host=rng.choice(["a.example", "b.example", "x.a.example", "y.x.a.example",
                                                 "c.other", None]),
                        path=rng.choice(["/", "/api", "/api/v1/x", "/apix", "/b/c", "/api/v1", "*", None]))
    if kind == "tls":
        return Preamble("tls", sni=rng.choice(["a.example", "q.example", "z.other", None]),
                        alpn=rng.choice([(), ("h2",), ("http/1.1",)]))
    if kind == "tcpmux":
        return Preamble("tcpmux", service=rng.choice(
            ["orders", "orders/1", "orders/2", "orders/3", "alice:mail", "alice:mail/3", "alice:other",
             "ALICE:MAIL", "pay", "bob:x", "bad name"]))
    return Preamble("nmf", via=rng.choice(["net.tcp://h.example/app/x", "net.tcp://other/app/deep/y",
                                           "net.tcp://h.example:9/app/", "net.tcp://h.example/zzz",
                                           "not a uri"]))


def whole_rebuild(registered: list[Route], static: list[Route]) -> Router:
    """The old behaviour: one Router over registered (most specific first) then static routes."""
    ordered = sorted(registered, key=lambda route: specificity(route.match))
    return Router(ordered + static)


def test_incremental_layer_selects_as_a_whole_rebuild_does() -> None:
    rng = random.Random(1101)
    for round_ in range(60):
        static = [Route(f"s{i}", random_match(rng), object()) for i in range(rng.randrange(0, 6))]
        routes: dict[str, Route] = {}
        layer = RegisteredLayer()
        for step in range(rng.randrange(1, 40)):
            if routes and rng.random() < 0.3:
                name = rng.choice(sorted(routes))
                del routes[name]
                layer = layer.without(name)
            else:
                match = random_match(rng)
                route = Route(f"r:{match.describe(',')}", match, object())
                if route.name in routes:
                    continue
                routes[route.name] = route
                layer = layer.with_route(route)
            expected = whole_rebuild(list(routes.values()), static)
            actual = Router(static, layer)
            for _ in range(15):
                preamble = random_preamble(rng)
                ip = rng.choice(["127.0.0.1", "127.129.2.3", "127.64.2.1"])
                assert actual.select(preamble, ip) is expected.select(preamble, ip), (round_, step, preamble)
                if expected.select(preamble, ip) is None:
                    assert actual.refusal_reason(preamble) == expected.refusal_reason(preamble)
            assert actual.routes == expected.routes


def test_snapshots_are_immutable() -> None:
    first = Route("a", Match(protocol="http", host="a.example", path="/"), object())
    before = Router((), RegisteredLayer().with_route(first))
    after = before.with_registered(before.registered.without("a").with_route(
        Route("b", Match(protocol="http", host="a.example", path="/api"), object())))
    preamble = Preamble("http", host="a.example", path="/api/x")
    assert before.select(preamble) is first
    assert after.select(preamble).name == "b"  # type: ignore[union-attr]
    assert [r.name for r in before.routes] == ["a"] and [r.name for r in after.routes] == ["b"]


def test_registered_layer_refuses_silent_and_default_routes() -> None:
    import pytest

    with pytest.raises(ValueError):
        RegisteredLayer().with_route(Route("d", Match(default=True), object()))
