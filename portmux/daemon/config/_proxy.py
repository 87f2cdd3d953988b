# -*- test-case-name: tests.daemon.test_config -*-
"""The ``proxy`` target's value: client endpoint strings, or a table with timeouts and TLS options.

Every endpoint is checked by building it (never connecting), each problem at its own
key: ``proxy[1]``, ``proxy.endpoints[0]``, ``proxy.ca``, ``proxy.client_cert``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portmux.daemon.config._checks import positive
from portmux.daemon.config._context import BuildContext
from portmux.daemon.config._problems import join_key, one_line
from portmux.daemon.config._schema import (
    INVALID,
    AnyOf,
    ListOf,
    Number,
    OneOf,
    TableOf,
    Text,
    Walk,
    setting,
)

__all__ = ["PROXY_VALUE", "ClientCertificate", "ProxyPlan", "ProxyTable", "build_proxy"]

_ENDPOINTS = ListOf(
    "an array of client endpoint strings",
    item=Text("a client endpoint string"),
    single=True,
    empty="must not be empty: list one or more client endpoint strings",
)


@dataclass(frozen=True)
class ClientCertificate:
    """``client_cert = { cert = "...", key = "..." }``."""

    cert: str = setting(Text(), "the client certificate's PEM path")
    key: str | None = setting(Text(), "its private key's PEM path (default: in the same file)", default=None)

    def validate(self, key_path: str, walk: Walk) -> Any:
        return self.cert if self.key is None else (self.cert, self.key)


_CLIENT_CERT = AnyOf(
    'a path or a table { cert = "...", key = "..." }',
    choices=(Text(), TableOf(declaration=ClientCertificate)),
)


@dataclass(frozen=True)
class ProxyTable:
    """The table form: ``proxy = { endpoints = [...], connect_timeout = 5.0, ... }``."""

    endpoints: tuple[str, ...] = setting(
        _ENDPOINTS,
        "one or more client endpoint strings, round-robin with failover",
        missing="missing: list one or more client endpoint strings",
    )
    connect_timeout: float | None = setting(Number(), "seconds per backend attempt", default=None, check=positive)
    proxy_header: str | None = setting(OneOf("v1", "v2"), "send a PROXY header first", default=None)
    ca: str | None = setting(Text("a path"), "CA bundle verifying tls: backends", default=None)
    client_cert: Any = setting(_CLIENT_CERT, "client certificate for tls: backends", default=None)
    server_name: str | None = setting(Text(), "SNI and verified name for tls: backends", default=None)


@dataclass(frozen=True)
class ProxyPlan:
    """A checked proxy value: the built backends and ProxyTarget's options."""

    backends: tuple[Any, ...]
    options: dict[str, Any]


def _tls_problem(table: ProxyTable, key_path: str, walk: Walk) -> bool:
    """Report a CA bundle or client certificate that does not load, at its own key."""
    from portmux.tls import CertificateError, client_tls_options

    bad = False
    for name in ("ca", "client_cert"):
        value = getattr(table, name)
        if value is None:
            continue
        try:
            client_tls_options("localhost", base_dir=walk.base_dir, **{name: value})
        except (CertificateError, ValueError) as e:
            walk.problem(join_key(key_path, name), str(e))
            bad = True
    return bad


def _backend(item: str, key_path: str, tls: dict[str, Any], walk: Walk) -> Any:
    """One backend built from its endpoint string and the table's TLS options."""
    from twisted.internet.endpoints import clientFromString

    from portmux.tls import CertificateError, client_endpoint, is_tls_endpoint

    try:
        if tls or is_tls_endpoint(item):
            return client_endpoint(walk.reactor, item, base_dir=walk.base_dir, **tls)
        clientFromString(walk.reactor, item)
        return item
    except CertificateError as e:
        walk.problem(key_path, str(e))
    except Exception as e:  # noqa: BLE001 - endpoint parsers raise many kinds of errors
        walk.problem(key_path, f"cannot parse client endpoint {item!r}: {one_line(e)}")
    return INVALID


def _plan(value: Any, key_path: str, walk: Walk) -> Any:
    """Build every backend of a list or table value, each problem at its own key."""
    if isinstance(value, ProxyTable):
        table, endpoints_key = value, join_key(key_path, "endpoints")
    else:
        table, endpoints_key = ProxyTable(endpoints=value), key_path
    bad_files = _tls_problem(table, key_path, walk)
    tls = {n: getattr(table, n) for n in ("ca", "client_cert", "server_name") if getattr(table, n) is not None}
    if bad_files:  # still check each endpoint's own syntax, without the files reported above
        tls = {n: v for n, v in tls.items() if n == "server_name"}
    backends = [_backend(item, join_key(endpoints_key, i), tls, walk) for i, item in enumerate(table.endpoints)]
    if bad_files or any(b is INVALID for b in backends):
        return INVALID
    options: dict[str, Any] = {}
    if table.connect_timeout is not None:
        options["connect_timeout"] = float(table.connect_timeout)
    if table.proxy_header is not None:
        options["proxy_header"] = table.proxy_header
    return ProxyPlan(tuple(backends), options)


PROXY_VALUE = AnyOf(
    "an array of client endpoint strings or a table with endpoints",
    choices=(_ENDPOINTS, TableOf(declaration=ProxyTable)),
    check=_plan,
)


def build_proxy(plan: ProxyPlan, ctx: BuildContext) -> object:
    """A ProxyTarget over the checked backends."""
    from portmux.targets.proxy import ProxyTarget

    return ProxyTarget(ctx.reactor, list(plan.backends), **plan.options)
