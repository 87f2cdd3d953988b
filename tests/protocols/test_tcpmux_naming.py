"""Service names: grammar, version/namespace resolution in the Router, TCPMUX refusals."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route, Router, parse_networks
from portmux.protocols import tcpmux as naming
from portmux.targets.help import HelpTarget
from portmux.testing import RecordingTarget, feed_mux

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


# -- grammar -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "namespace", "name", "version"),
    [
        ("orders", "", "orders", ()),
        ("ORDERS", "", "orders", ()),
        ("orders/2", "", "orders", (2,)),
        ("orders/1.4", "", "orders", (1, 4)),
        ("orders/2.0", "", "orders", (2,)),
        ("alice:orders", "alice", "orders", ()),
        ("Alice:Orders/2", "alice", "orders", (2,)),
        ("alice@example.org:orders/10", "alice@example.org", "orders", (10,)),
        ("ssh", "", "ssh", ()),
        ("x-y_z.w+v", "", "x-y_z.w+v", ()),
        ("help", "", "help", ()),
    ],
)
def test_parse_valid(text: str, namespace: str, name: str, version: tuple[int, ...]) -> None:
    parsed = naming.parse(text)
    assert (parsed.namespace, parsed.name, parsed.version) == (namespace, name, version)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the name is empty"),
        ("orders/", "the version after '/' is empty"),
        ("orders/v2", "version 'v2' is not numbers separated by dots (e.g. 2 or 1.4)"),
        ("orders/1/2", "version '1/2' is not numbers separated by dots (e.g. 2 or 1.4)"),
        ("orders/1.", "version '1.' is not numbers separated by dots (e.g. 2 or 1.4)"),
        (":orders", "the namespace before ':' is empty"),
        ("alice:", "the service name is empty"),
        ("a:b:c", "more than one ':' (use namespace:name)"),
        ("-orders", "name '-orders' must start with a letter or digit and use only a-z 0-9 . _ + -"),
        ("al ice:x", "namespace 'al ice' has characters outside a-z 0-9 . _ + - @"),
        ("o@rders", "name 'o@rders' must start with a letter or digit and use only a-z 0-9 . _ + -"),
        ("x" * 65, "the name is longer than 64 characters"),
    ],
)
def test_parse_malformed_says_why(text: str, reason: str) -> None:
    with pytest.raises(naming.MalformedName) as caught:
        naming.parse(text)
    assert str(caught.value) == reason


def test_str_is_canonical() -> None:
    assert str(naming.parse("Alice:Orders/2.0")) == "alice:orders/2"
    assert str(naming.parse("orders")) == "orders"


def test_accepts_versions() -> None:
    route = naming.parse("alice:orders/2")
    assert route.accepts(naming.parse("alice:orders"))
    assert route.accepts(naming.parse("ALICE:orders/2"))
    assert not route.accepts(naming.parse("alice:orders/1"))
    assert not route.accepts(naming.parse("orders"))
    assert not route.accepts(naming.parse("bob:orders"))
    assert not naming.parse("orders").accepts(naming.parse("orders/1"))


def test_pick_newest_prefers_highest_then_first() -> None:
    items = [(naming.parse(t), t) for t in ("a/1", "a/10", "a/2", "a/10.0", "a")]
    assert naming.pick_newest(items) == "a/10"
    assert naming.pick_newest([]) is None


def test_rank_newest_is_stable() -> None:
    items = [(naming.parse(t), t) for t in ("a/1", "a/10", "a/2", "a/10.0", "a")]
    assert naming.rank_newest(items) == ["a/10", "a/10.0", "a/2", "a/1", "a"]


def test_namespace_pattern() -> None:
    pattern = naming.parse_pattern("Alice:*")
    assert pattern.is_pattern and str(pattern) == "alice:*"
    assert pattern.accepts(naming.parse("alice:mail/2"))
    assert not pattern.accepts(naming.parse("bob:mail"))
    assert pattern.covers(naming.parse("alice:mail"))
    assert naming.parse("orders").covers(naming.parse("orders/7"))
    assert not naming.parse_pattern("orders").is_pattern
    with pytest.raises(naming.MalformedName):
        naming.parse_pattern("bad ns:*")
    with pytest.raises(naming.MalformedName):
        naming.parse("alice:*")  # a client cannot ask for a pattern


def test_service_index_candidates_and_ranking() -> None:
    index = naming.ServiceIndex(
        [("orders/1", "o1"), (None, "any"), ("orders/3", "o3"), ("alice:*", "alice"), ("ssh", "ssh")]
    )
    assert index.candidates("ORDERS/2") == ("o1", "any", "o3", "alice")
    assert index.candidates("nosuch") == ("any", "alice")
    assert index.candidates(None) == ("any", "alice")
    assert index.ranked("orders", "o1") == ("o3", "o1")
    assert index.ranked("orders/1", "o1") == ("o1",)
    assert index.ranked("alice:x", "alice") == ("alice",)
    assert sorted(map(str, index.names)) == ["orders/1", "orders/3", "ssh"]


def test_resolution_failure_reasons() -> None:
    registered = [naming.parse(t) for t in ("orders/1", "orders/2", "alice:orders", "ssh")]
    assert naming.resolution_failure("nosuch", registered) == "unknown service 'nosuch'"
    assert naming.resolution_failure("orders/3", registered) == (
        "service 'orders' has no version 3 (registered: 1, 2)"
    )
    assert naming.resolution_failure("alice:orders/2", registered) == (
        "service 'alice:orders' has no version 2 (registered: unversioned)"
    )
    assert naming.resolution_failure("bob:orders/2", registered) == (
        "unknown service 'bob:orders/2'"
    )
    assert naming.resolution_failure("a:b:c", registered) == (
        "malformed service name 'a:b:c': more than one ':' (use namespace:name)"
    )


# -- resolution in the Router --------------------------------------------------


def route(name: str, service: str, **match: Any) -> Route:
    return Route(name, Match(protocol="tcpmux", service=service, **match), object())


def pick(router: Router, service: str, ip: str = "127.0.0.1") -> str | None:
    chosen = router.select(Preamble(protocol="tcpmux", service=service), ip)
    return None if chosen is None else chosen.name


ROUTER = Router(
    [
        route("v1", "orders/1"),
        route("v3", "orders/3"),
        route("v2", "orders/2"),
        route("alice2", "alice:orders/2"),
        route("alice10", "alice:orders/10"),
        route("plain", "ssh"),
        route("ci", "MixedCase"),
    ]
)


@pytest.mark.parametrize(
    ("asked", "chosen"),
    [
        ("orders", "v3"),
        ("ORDERS", "v3"),
        ("orders/1", "v1"),
        ("orders/2", "v2"),
        ("orders/3", "v3"),
        ("orders/3.0", "v3"),
        ("orders/4", None),
        ("alice:orders", "alice10"),
        ("alice:orders/2", "alice2"),
        ("bob:orders", None),
        ("ssh", "plain"),
        ("ssh/1", None),
        ("mixedcase", "ci"),
        ("a:b:c", None),
        ("orders/", None),
    ],
)
def test_router_resolves(asked: str, chosen: str | None) -> None:
    assert pick(ROUTER, asked) == chosen


def test_newest_regardless_of_order_and_ties_go_to_the_first() -> None:
    router = Router([route("old", "db/1"), route("new-a", "db/2"), route("new-b", "db/2")])
    assert pick(router, "db") == "new-a"
    router = Router([route("new", "db/5"), route("old", "db/4")])
    assert pick(router, "db") == "new"


def test_newest_version_the_peer_may_reach() -> None:
    lan = parse_networks(["127.128.0.0/9"])
    router = Router([route("v1", "db/1"), route("v2-lan", "db/2", network=lan)])
    assert pick(router, "db", "127.129.2.3") == "v2-lan"
    assert pick(router, "db", "127.0.0.1") == "v1"
    assert pick(router, "db/2", "127.0.0.1") is None


def test_malformed_route_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="more than one ':'"):
        Match(protocol="tcpmux", service="a:b:c")


def test_router_refusal_reason() -> None:
    assert ROUTER.refusal_reason(Preamble(protocol="tcpmux", service="orders/9")) == (
        "service 'orders' has no version 9 (registered: 1, 2, 3)"
    )


# -- refusals on the wire ------------------------------------------------------


def exchange(routes: list[Route], data: bytes) -> tuple[bytes, StringTransport]:
    fed = feed_mux(routes, data)
    return fed.written, fed.transport


def wire_routes(target: Any) -> list[Route]:
    return [
        Route("v1", Match(protocol="tcpmux", service="orders/1"), target),
        Route("v2", Match(protocol="tcpmux", service="orders/2"), target),
        Route("ns", Match(protocol="tcpmux", service="alice:orders/2"), target),
        Route("help", Match(protocol="tcpmux", service="help"), HelpTarget()),
    ]


def test_wire_unknown_service() -> None:
    out, transport = exchange(wire_routes(RecordingTarget(accept="ok")), b"nosuch\r\n")
    assert out == b"-unknown service 'nosuch'\r\n"
    assert transport.disconnecting


def test_wire_malformed_name() -> None:
    out, transport = exchange(wire_routes(RecordingTarget(accept="ok")), b"alice:orders/x\r\n")
    assert out == (
        b"-malformed service name 'alice:orders/x': "
        b"version 'x' is not numbers separated by dots (e.g. 2 or 1.4)\r\n"
    )
    assert transport.disconnecting


def test_wire_version_not_found() -> None:
    out, transport = exchange(wire_routes(RecordingTarget(accept="ok")), b"orders/7\r\n")
    assert out == b"-service 'orders' has no version 7 (registered: 1, 2)\r\n"
    assert transport.disconnecting


def test_wire_newest_version_accepted_with_plus() -> None:
    target = RecordingTarget(accept="ok")
    out, transport = exchange(wire_routes(target), b"Orders\r\nfirst bytes")
    assert out == b"+ok\r\n"
    assert not transport.disconnecting
    [connection] = target.connections
    assert connection.route.name == "v2"
    assert connection.payload == b"first bytes"


def test_wire_namespace_and_exact_version() -> None:
    target = RecordingTarget(accept="ok")
    exchange(wire_routes(target), b"ALICE:orders/2\r\n")
    exchange(wire_routes(target), b"orders/1\r\n")
    assert [c.route.name for c in target.connections] == ["ns", "v1"]


def test_wire_help_lists_full_names() -> None:
    out, transport = exchange(wire_routes(RecordingTarget(accept="ok")), b"HELP\r\n")
    assert out == b"alice:orders/2\r\norders/1\r\norders/2\r\n"
    assert transport.disconnecting


# -- the config file -------------------------------------------------------------

CONFIG = """
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[[route]]
name = "orders2"
match = { protocol = "tcpmux", service = "alice:orders/2" }
echo = true

[[route]]
name = "orders1"
match = { protocol = "tcpmux", service = "alice:orders/1" }
echo = true

[[route]]
name = "wcf-root"
match = { protocol = "nmf", via = "net.tcp://+/" }
echo = true

[[route]]
name = "wcf-orders"
match = { protocol = "nmf", via = "net.tcp://+/orders/" }
echo = true
"""


def test_config_routes_by_service_and_via(tmp_path: Any) -> None:
    from portmux.daemon.config import load_config

    path = tmp_path / "portmux.toml"
    path.write_text(CONFIG)
    router = Router(load_config(path).routes)
    assert pick(router, "alice:orders") == "orders2"
    assert pick(router, "alice:orders/1") == "orders1"
    nmf = Preamble(protocol="nmf", via="net.tcp://h/orders/svc", version="1.0", mode="duplex")
    assert router.select(nmf).name == "wcf-orders"  # type: ignore[union-attr]


def test_config_reports_malformed_service_and_via(tmp_path: Any) -> None:
    from portmux.daemon.config import validate_file

    path = tmp_path / "portmux.toml"
    path.write_text(
        CONFIG.replace('"alice:orders/1"', '"alice:orders/x"').replace(
            '"net.tcp://+/orders/"', '"orders/"'
        )
    )
    config, errors, _ = validate_file(path)
    text = "\n".join(str(e) for e in errors)
    assert config is None
    assert "route[1].match: service 'alice:orders/x': version 'x' is not numbers" in text
    assert "route[3].match: via: 'orders/' is not an absolute URI" in text


def test_wire_help_lists_canonical_names() -> None:
    routes = [
        Route("a", Match(protocol="tcpmux", service="Alice:Orders/2.0"), RecordingTarget(accept="ok")),
        Route("help", Match(protocol="tcpmux", service="HELP"), HelpTarget()),
    ]
    out, _ = exchange(routes, b"help\r\n")
    assert out == b"alice:orders/2\r\n"


def test_routes_without_a_service_keep_their_place_in_the_order() -> None:
    catch_all = Route("catch-all", Match(protocol="tcpmux"), object())
    first = Router([catch_all, route("v1", "orders/1"), route("v2", "orders/2")])
    assert pick(first, "orders") == "catch-all"
    last = Router([route("v1", "orders/1"), route("v2", "orders/2"), catch_all])
    assert pick(last, "orders") == "v2"
    assert pick(last, "orders/7") == "catch-all"
    assert pick(last, "anything") == "catch-all"
    assert pick(Router([route("v1", "orders/1")]), "anything") is None
