"""Registered routes: matches from config route keys, groups, conflicts, reservations, protocol 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from portmux.control._keys import parse_match, registration_match, translate_address
from portmux.control._registry import RegistrationError, Registry, Reservation
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Router


@dataclass(eq=False)
class Owner:
    uid: int
    pid: int = 1
    gid: int = 0
    label: str = "test"


def registry(reservations: tuple[Reservation, ...] = ()) -> tuple[Registry, list[list[Any]]]:
    published: list[list[Any]] = []
    return Registry(published.append, reservations), published


def test_parse_match_normalises() -> None:
    assert parse_match({"protocol": "tcpmux", "service": "Alice:Orders/2.0"}).describe(",") == (
        "protocol=tcpmux,service=alice:orders/2")
    assert parse_match({"protocol": "HTTP", "host": "Example.COM.", "path": "/api"}).describe(",") == (
        "protocol=http,host=example.com,path=/api")
    assert parse_match({"sni": "WWW.example.com"}) == Match(sni="www.example.com")
    assert parse_match({"via": "net.tcp://+/App"}).via == "net.tcp://+/app/"
    assert parse_match({"via": "net.tcp://*:808/app/"}).via == "net.tcp://*:808/app/"
    assert parse_match({"via": "net.tcp://Host.example/app/"}).via == "net.tcp://host.example/app/"
    assert parse_match({"path": "/", "network": "127.128.0.0/9"}).network == Match(
        network=parse_match({"path": "/", "network": ["127.128.0.0/9"]}).network).network


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"protocol": "http"},  # no address key: it would take every HTTP connection
        {"kind": "tcpmux", "service": "echo"},  # protocol 1's key inside a protocol 2 match
        {"service": "bad name"},
        {"path": "no-slash"},
        {"sni": ""},
        {"host": 7},
        {"protocol": "gopher", "host": "x"},
        {"via": "not a uri"},
        {"host": "x", "network": "not-a-network"},
        {"host": "x", "silent": True},
    ],
)
def test_bad_matches_are_refused(keys: dict[str, Any]) -> None:
    with pytest.raises(RegistrationError) as e:
        parse_match(keys)
    assert e.value.code == "BadMatch"


def test_protocol_1_addresses_translate_to_match_keys() -> None:
    assert translate_address({"kind": "tcpmux", "service": "echo"}) == {"protocol": "tcpmux", "service": "echo"}
    assert translate_address({"kind": "http"}) == {"protocol": "http", "host": "*", "path": "/"}
    assert translate_address({"kind": "tls", "sni": "a.example"}) == {"protocol": "tls", "sni": "a.example"}
    assert translate_address({"kind": "nettcp", "via": "net.tcp://+/app/"}) == {
        "protocol": "nmf", "via": "net.tcp://+/app/"}
    assert translate_address({"kind": "nettcp", "via": "net.tcp://host/app/", "host_mode": "weak"}) == {
        "protocol": "nmf", "via": "net.tcp://*/app/"}
    old, note = registration_match({"address": {"kind": "http", "host": "a.example", "path": "/x"}})
    new, none = registration_match({"match": {"protocol": "http", "host": "a.example", "path": "/x"}})
    assert old == new and none is None
    assert note is not None and "deprecated" in note and "'protocol': 'http'" in note


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "smtp"},
        {"kind": "tcpmux", "service": "bad name"},
        {"kind": "http", "path": "no-slash"},
        {"kind": "tls"},
        {"kind": "nettcp", "via": "http://x/"},
        {"kind": "nettcp", "via": "net.tcp://+/a/", "host_mode": "exact"},
        {"kind": "http", "host": 7},
        {"service": "echo"},  # no kind: protocol 2 keys sent as a protocol 1 address
    ],
)
def test_bad_protocol_1_addresses_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(RegistrationError) as e:
        registration_match({"address": fields})
    assert e.value.code == "BadAddress"


def test_unknown_kind_error_names_the_new_keys() -> None:
    with pytest.raises(RegistrationError) as e:
        registration_match({"address": {"kind": "smtp"}})
    assert "'match'" in e.value.message and "protocol, host, path, sni" in e.value.message


def select(reg: Registry, preamble: Preamble) -> str | None:
    route = Router(reg.routes()).select(preamble)
    return route.name if route else None


def test_routes_match_preambles_most_specific_first() -> None:
    reg, published = registry()
    owner = Owner(uid=1000)
    for keys in (
        {"protocol": "http", "host": "*", "path": "/"},
        {"protocol": "http", "host": "example.com", "path": "/api"},
        {"protocol": "tls", "sni": "*.example.com"},
        {"protocol": "tcpmux", "service": "orders/1"},
        {"protocol": "tcpmux", "service": "orders/2"},
        {"protocol": "nmf", "via": "net.tcp://+/app/"},
        {"protocol": "nmf", "via": "net.tcp://host.example/app/deep/"},
        {"protocol": "nmf", "via": "net.tcp://*/app/deep/"},
    ):
        reg.register(owner, parse_match(keys), "handoff")
    assert len(published[-1]) == 8
    http = Preamble("http", host="example.com", path="/api/v1")
    assert select(reg, http) == "handoff:protocol=http,host=example.com,path=/api"
    assert select(reg, Preamble("http", host="other", path="/api")) == "handoff:protocol=http,host=*,path=/"
    assert select(reg, Preamble("tls", sni="a.example.com")) == "handoff:protocol=tls,sni=*.example.com"
    assert select(reg, Preamble("tls", sni="example.org")) is None
    assert select(reg, Preamble("tcpmux", service="orders")) == "handoff:protocol=tcpmux,service=orders/2"
    assert select(reg, Preamble("tcpmux", service="orders/1")) == "handoff:protocol=tcpmux,service=orders/1"
    assert select(reg, Preamble("tcpmux", service="orders/3")) is None
    via = "net.tcp://host.example:808/app/deep/svc.svc"
    assert select(reg, Preamble("nmf", via=via)) == "handoff:protocol=nmf,via=net.tcp://+/app/"
    other = "net.tcp://other:808/App/deep/svc"
    assert select(reg, Preamble("nmf", via=other)) == "handoff:protocol=nmf,via=net.tcp://+/app/"
    assert select(reg, Preamble("nmf", via="net.tcp://x/application")) is None


def test_nmf_exact_and_weak_rank_by_longest_prefix_without_a_strong_route() -> None:
    reg, _ = registry()
    owner = Owner(uid=1000)
    for via in ("net.tcp://host.example/app/deep/", "net.tcp://*/app/deep/", "net.tcp://*/app/"):
        reg.register(owner, parse_match({"protocol": "nmf", "via": via}), "handoff")
    deep = "net.tcp://host.example:808/app/deep/svc.svc"
    assert select(reg, Preamble("nmf", via=deep)) == "handoff:protocol=nmf,via=net.tcp://host.example/app/deep/"
    other = "net.tcp://other:808/App/deep/svc"
    assert select(reg, Preamble("nmf", via=other)) == "handoff:protocol=nmf,via=net.tcp://*/app/deep/"
    assert select(reg, Preamble("nmf", via="net.tcp://x/app/svc")) == "handoff:protocol=nmf,via=net.tcp://*/app/"


def test_same_uid_joins_group_other_uid_conflicts() -> None:
    reg, published = registry()
    a, b, c = Owner(uid=1000), Owner(uid=1000), Owner(uid=2000)
    match = parse_match({"protocol": "tcpmux", "service": "echo"})
    group = reg.register(a, match, "handoff")
    assert reg.register(b, match, "handoff") is group
    assert len(group.members) == 2 and len(published) == 1
    with pytest.raises(RegistrationError) as e:
        reg.register(c, match, "handoff")
    assert e.value.code == "ConflictingRegistration"
    with pytest.raises(RegistrationError) as e:
        reg.register(Owner(uid=1000), match, "proxy", "tcp:127.0.0.1:1")
    assert e.value.code == "ConflictingRegistration"
    with pytest.raises(RegistrationError) as e:
        reg.register(a, match, "handoff")
    assert e.value.code == "AlreadyRegistered"
    assert [m.owner for m in group.candidates()] in ([a, b], [b, a])
    turns = {group.candidates()[0].owner for _ in range(4)}
    assert turns == {a, b}


def test_old_and_new_keys_for_one_address_form_one_group() -> None:
    reg, _ = registry()
    old, _ = registration_match({"address": {"kind": "tcpmux", "service": "Echo"}})
    new, _ = registration_match({"match": {"protocol": "tcpmux", "service": "echo"}})
    group = reg.register(Owner(uid=1), old, "handoff")
    assert reg.register(Owner(uid=1), new, "handoff") is group


def test_connection_end_drops_its_routes_at_once() -> None:
    reg, published = registry()
    a, b = Owner(uid=1), Owner(uid=1)
    echo = parse_match({"protocol": "tcpmux", "service": "echo"})
    web = parse_match({"protocol": "http", "host": "*", "path": "/"})
    reg.register(a, echo, "handoff")
    reg.register(b, echo, "handoff")
    reg.register(a, web, "handoff")
    assert reg.unregister_all(a) == [echo, web]
    assert [r.name for r in published[-1]] == ["handoff:protocol=tcpmux,service=echo"]
    assert reg.unregister(b, echo) is True
    assert published[-1] == [] and reg.groups == {}
    assert reg.unregister(b, echo) is False


def test_reservations_keep_names_for_their_uids() -> None:
    reservations = (
        Reservation(Match(host="example.com", path="/admin"), (0,)),
        Reservation(Match(service="alice:*"), (1001,)),
        Reservation(Match(service="payroll"), (1002,)),
        Reservation(Match(sni="*.bank.example"), (1003,)),
        Reservation(Match(via="net.tcp://+/secure/"), (1004,)),
        Reservation(Match(protocol="tcpmux", service="db"), (1005,)),
    )
    reg, _ = registry(reservations)
    refused = [
        (1000, {"protocol": "http", "host": "example.com", "path": "/admin/users"}),
        (1000, {"protocol": "tcpmux", "service": "alice:mail"}),
        (1000, {"service": "alice:mail"}),
        (1000, {"protocol": "tcpmux", "service": "payroll/2"}),
        (1000, {"protocol": "tls", "sni": "www.bank.example"}),
        (1000, {"sni": "*.eu.bank.example"}),
        (1000, {"protocol": "nmf", "via": "net.tcp://host/secure/x/"}),
        (1000, {"service": "db"}),  # no protocol: it could take tcpmux requests for db
    ]
    for uid, keys in refused:
        with pytest.raises(RegistrationError) as e:
            reg.register(Owner(uid=uid), parse_match(keys), "handoff")
        assert e.value.code == "AddressReserved", keys
    allowed = [
        (0, {"protocol": "http", "host": "example.com", "path": "/admin"}),
        (1000, {"protocol": "http", "host": "example.com", "path": "/administrator"}),
        (1000, {"protocol": "http", "host": "*", "path": "/"}),
        (1001, {"protocol": "tcpmux", "service": "alice:mail"}),
        (1000, {"protocol": "tcpmux", "service": "bob:mail"}),
        (1003, {"protocol": "tls", "sni": "www.bank.example"}),
        (1000, {"protocol": "tls", "sni": "*.example"}),
        (1004, {"protocol": "nmf", "via": "net.tcp://host/secure/"}),
        (1000, {"protocol": "h2c", "service": "db"}),  # another protocol: not the reserved db
    ]
    for uid, keys in allowed:
        reg.register(Owner(uid=uid), parse_match(keys), "handoff")


def test_a_reservation_without_an_address_key_covers_nothing() -> None:
    reg, _ = registry((Reservation(Match(protocol="http"), (5,)),))
    reg.register(Owner(uid=6), parse_match({"protocol": "http", "host": "a.example"}), "handoff")


def test_reservation_from_config() -> None:
    from portmux.daemon import config

    assert config.Reservation is Reservation
    reg, _ = registry((Reservation(Match(service="db"), (5,)),))
    with pytest.raises(RegistrationError):
        reg.register(Owner(uid=6), parse_match({"protocol": "tcpmux", "service": "db"}), "handoff")
    reg.register(Owner(uid=5), parse_match({"protocol": "tcpmux", "service": "db"}), "handoff")


def test_modes_and_proxy_members() -> None:
    made: list[str] = []

    class FakeProxy:
        def __init__(self, endpoint: str) -> None:
            made.append(endpoint)
            self.stopped = False

        def stop(self) -> None:
            self.stopped = True

    published: list[object] = []
    reg = Registry(published.append, make_proxy=FakeProxy)
    owner = Owner(uid=1)
    match = parse_match({"protocol": "tcpmux", "service": "p"})
    with pytest.raises(RegistrationError):
        reg.register(owner, match, "teleport")
    with pytest.raises(RegistrationError):
        reg.register(owner, match, "proxy")
    group = reg.register(owner, match, "proxy", "tcp:127.0.0.1:9")
    assert made == ["tcp:127.0.0.1:9"]
    assert reg.describe()[0]["match"] == {"protocol": "tcpmux", "service": "p"}
    proxy = group.members[0].target
    reg.unregister_all(owner)
    assert proxy.stopped
    assert reg.describe() == []


def test_registered_and_static_routes_share_the_indexes_in_the_multiplexer() -> None:
    from twisted.internet.task import Clock

    from portmux.core.mux import Multiplexer
    from portmux.targets.help import service_names
    from portmux.testing import RecordingTarget

    mux = Multiplexer(Clock(), [])
    mux.add_route(RecordingTarget(), name="static-app", protocol="nmf", via="net.tcp://+/app/")
    mux.add_route(RecordingTarget(), name="static-orders-3", protocol="tcpmux",
                  service="orders/3")
    mux.add_route(RecordingTarget(), name="help", protocol="tcpmux", service="help")
    reg = Registry(mux.set_registered_routes)
    owner = Owner(uid=1)
    for keys in ({"protocol": "nmf", "via": "net.tcp://*/app/deep/"},
                 {"protocol": "nmf", "via": "net.tcp://+/app/deep/deeper/"},
                 {"protocol": "tcpmux", "service": "orders/2"},
                 {"protocol": "tcpmux", "service": "alice:mail"}):
        reg.register(owner, parse_match(keys), "handoff")

    def name(preamble: Preamble) -> str | None:
        route = mux.router.select(preamble)
        return None if route is None else route.name

    assert name(Preamble("nmf", via="net.tcp://h/app/deep/x")) == "static-app"
    assert name(Preamble("nmf", via="net.tcp://h/app/deep/deeper/x")) == (
        "handoff:protocol=nmf,via=net.tcp://+/app/deep/deeper/")
    assert name(Preamble("tcpmux", service="orders")) == "static-orders-3"
    assert name(Preamble("tcpmux", service="orders/2")) == "handoff:protocol=tcpmux,service=orders/2"
    assert service_names(mux.router) == ["alice:mail", "orders/2", "orders/3"]
