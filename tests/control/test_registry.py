"""Registered routes: addresses, matching, groups, conflicts and reservations."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from portmux.control._registry import RegistrationError, Registry, parse_address
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Router


@dataclass(eq=False)
class Owner:
    uid: int
    pid: int = 1
    gid: int = 0
    label: str = "test"


def registry(reservations: tuple[object, ...] = ()) -> tuple[Registry, list[list[object]]]:
    published: list[list[object]] = []
    return Registry(published.append, reservations), published


def addr(**fields: str) -> object:
    return parse_address(fields)


def test_parse_addresses_normalises() -> None:
    assert str(addr(kind="tcpmux", service="Alice:Orders/2.0")) == "tcpmux:alice:orders/2"
    assert str(addr(kind="http", host="Example.COM.", path="/api")) == "http:example.com/api"
    assert str(addr(kind="tls", sni="WWW.example.com")) == "tls:www.example.com"
    assert str(addr(kind="nettcp", via="net.tcp://+/App")) == "net.tcp://+/app/"
    assert str(addr(kind="nettcp", via="net.tcp://*:808/app/")) == "net.tcp://*/app/"
    exact = addr(kind="nettcp", via="net.tcp://Host.example:808/app/")
    assert str(exact) == "net.tcp://host.example/app/"


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
    ],
)
def test_bad_addresses_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(RegistrationError) as e:
        parse_address(fields)
    assert e.value.code == "BadAddress"


def select(reg: Registry, preamble: Preamble) -> str | None:
    route = Router(reg.routes()).select(preamble)
    return route.name if route else None


def test_routes_match_preambles_most_specific_first() -> None:
    reg, published = registry()
    owner = Owner(uid=1000)
    for fields in (
        {"kind": "http", "host": "*", "path": "/"},
        {"kind": "http", "host": "example.com", "path": "/api"},
        {"kind": "tls", "sni": "*.example.com"},
        {"kind": "tcpmux", "service": "orders/1"},
        {"kind": "tcpmux", "service": "orders/2"},
        {"kind": "nettcp", "via": "net.tcp://+/app/"},
        {"kind": "nettcp", "via": "net.tcp://host.example/app/deep/"},
        {"kind": "nettcp", "via": "net.tcp://*/app/deep/"},
    ):
        reg.register(owner, parse_address(fields), "handoff")
    assert len(published[-1]) == 8
    http = Preamble("http", host="example.com", path="/api/v1")
    assert select(reg, http) == "handoff:http:example.com/api"
    assert select(reg, Preamble("http", host="other", path="/api")) == "handoff:http:*/"
    assert select(reg, Preamble("tls", sni="a.example.com")) == "handoff:tls:*.example.com"
    assert select(reg, Preamble("tls", sni="example.org")) is None
    assert select(reg, Preamble("tcpmux", service="orders")) == "handoff:tcpmux:orders/2"
    assert select(reg, Preamble("tcpmux", service="orders/1")) == "handoff:tcpmux:orders/1"
    assert select(reg, Preamble("tcpmux", service="orders/3")) is None
    via = "net.tcp://host.example:808/app/deep/svc.svc"
    assert select(reg, Preamble("nmf", via=via)) == "handoff:net.tcp://host.example/app/deep/"
    other = "net.tcp://other:808/App/deep/svc"
    assert select(reg, Preamble("nmf", via=other)) == "handoff:net.tcp://*/app/deep/"
    assert select(reg, Preamble("nmf", via="net.tcp://x/app/svc")) == "handoff:net.tcp://+/app/"
    assert select(reg, Preamble("nmf", via="net.tcp://x/application")) is None


def test_same_uid_joins_group_other_uid_conflicts() -> None:
    reg, published = registry()
    a, b, c = Owner(uid=1000), Owner(uid=1000), Owner(uid=2000)
    address = parse_address({"kind": "tcpmux", "service": "echo"})
    group = reg.register(a, address, "handoff")
    assert reg.register(b, address, "handoff") is group
    assert len(group.members) == 2 and len(published) == 1
    with pytest.raises(RegistrationError) as e:
        reg.register(c, address, "handoff")
    assert e.value.code == "ConflictingRegistration"
    with pytest.raises(RegistrationError) as e:
        reg.register(Owner(uid=1000), address, "proxy", "tcp:127.0.0.1:1")
    assert e.value.code == "ConflictingRegistration"
    with pytest.raises(RegistrationError) as e:
        reg.register(a, address, "handoff")
    assert e.value.code == "AlreadyRegistered"
    assert [m.owner for m in group.candidates()] in ([a, b], [b, a])
    turns = {group.candidates()[0].owner for _ in range(4)}
    assert turns == {a, b}


def test_connection_end_drops_its_routes_at_once() -> None:
    reg, published = registry()
    a, b = Owner(uid=1), Owner(uid=1)
    echo = parse_address({"kind": "tcpmux", "service": "echo"})
    web = parse_address({"kind": "http", "host": "*", "path": "/"})
    reg.register(a, echo, "handoff")
    reg.register(b, echo, "handoff")
    reg.register(a, web, "handoff")
    assert reg.unregister_all(a) == [echo, web]
    assert [r.name for r in published[-1]] == ["handoff:tcpmux:echo"]
    assert reg.unregister(b, echo) is True
    assert published[-1] == [] and reg.groups == {}
    assert reg.unregister(b, echo) is False


def test_reservations_keep_names_for_their_uids() -> None:
    reservations = (
        {"match": {"host": "example.com", "path": "/admin"}, "uids": [0]},
        {"match": {"service": "alice:*"}, "uids": [1001]},
        {"match": {"service": "payroll"}, "uids": [1002]},
        {"match": {"sni": "*.bank.example"}, "uids": [1003]},
        {"match": {"via": "net.tcp://+/secure/"}, "uids": [1004]},
    )
    reg, _ = registry(reservations)
    refused = [
        (1000, {"kind": "http", "host": "example.com", "path": "/admin/users"}),
        (1000, {"kind": "tcpmux", "service": "alice:mail"}),
        (1000, {"kind": "tcpmux", "service": "payroll/2"}),
        (1000, {"kind": "tls", "sni": "www.bank.example"}),
        (1000, {"kind": "nettcp", "via": "net.tcp://host/secure/x/"}),
    ]
    for uid, fields in refused:
        with pytest.raises(RegistrationError) as e:
            reg.register(Owner(uid=uid), parse_address(fields), "handoff")
        assert e.value.code == "AddressReserved"
    allowed = [
        (0, {"kind": "http", "host": "example.com", "path": "/admin"}),
        (1000, {"kind": "http", "host": "example.com", "path": "/administrator"}),
        (1001, {"kind": "tcpmux", "service": "alice:mail"}),
        (1000, {"kind": "tcpmux", "service": "bob:mail"}),
        (1003, {"kind": "tls", "sni": "www.bank.example"}),
        (1004, {"kind": "nettcp", "via": "net.tcp://host/secure/"}),
    ]
    for uid, fields in allowed:
        reg.register(Owner(uid=uid), parse_address(fields), "handoff")


def test_reservation_from_config_match_object() -> None:
    @dataclass
    class ConfigReservation:
        match: Match
        uids: tuple[int, ...]

    reg, _ = registry((ConfigReservation(Match(service="db"), (5,)),))
    with pytest.raises(RegistrationError):
        reg.register(Owner(uid=6), parse_address({"kind": "tcpmux", "service": "db"}), "handoff")
    reg.register(Owner(uid=5), parse_address({"kind": "tcpmux", "service": "db"}), "handoff")


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
    address = parse_address({"kind": "tcpmux", "service": "p"})
    with pytest.raises(RegistrationError):
        reg.register(owner, address, "teleport")
    with pytest.raises(RegistrationError):
        reg.register(owner, address, "proxy")
    group = reg.register(owner, address, "proxy", "tcp:127.0.0.1:9")
    assert made == ["tcp:127.0.0.1:9"]
    proxy = group.members[0].target
    reg.unregister_all(owner)
    assert proxy.stopped
    assert reg.describe() == []
