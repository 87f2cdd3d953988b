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
from portmux.daemon.config._limits import ProxyTimeoutsTable
from portmux.daemon.config._problems import join_key, one_line
from portmux.daemon.config._schema import (
    INVALID,
    AnyOf,
    Flag,
    ListOf,
    Number,
    OneOf,
    TableOf,
    Text,
    Walk,
    Whole,
    read_table,
    schema_of,
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


def _via_address(value: str, key_path: str, walk: Walk) -> Any:
    """``net.tcp://HOST:PORT``: the address a rewritten Via names (no path: the client's is kept)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        walk.problem(key_path, f"not a net.tcp address: {e}")
        return INVALID
    if parts.scheme != "net.tcp" or not parts.hostname or parts.path.strip("/") or parts.query:
        walk.problem(key_path, f'expected "net.tcp://HOST[:PORT]" without a path, got {value!r}')
        return INVALID
    return value.rstrip("/")


_REWRITE_VIA = AnyOf(
    'true, or a "net.tcp://HOST:PORT" address',
    choices=(Flag(), Text("a net.tcp address", check=_via_address)),
)


@dataclass(frozen=True)
class HealthCheckTable:
    """``health_check = { interval = 2.0, rise = 2, fall = 3, http_path = "/health" }``."""

    interval: float = setting(Number(), "seconds between checks of each backend", default=2.0, check=positive)
    timeout: float = setting(Number(), "seconds a check may take", default=1.0, check=positive)
    rise: int = setting(Whole(), "successes in a row that mark a backend up", default=2, check=positive)
    fall: int = setting(Whole(), "failures in a row that mark a backend down", default=3, check=positive)
    http_path: str | None = setting(
        Text("a path"), "send GET with this path and expect http_status (else: TCP connect only)", default=None
    )
    http_status: int = setting(Whole(), "the HTTP status a healthy backend answers", default=200)
    http_host: str = setting(Text(), "the Host header of the check", default="localhost")

    def validate(self, key_path: str, walk: Walk) -> Any:
        from portmux.targets._health import HealthCheck

        if self.http_path is not None and not self.http_path.startswith("/"):
            walk.problem(join_key(key_path, "http_path"), 'must start with "/"')
            return INVALID
        return HealthCheck(float(self.interval), float(self.timeout), self.rise, self.fall,
                           self.http_path, self.http_status, self.http_host)


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
    per_request: bool | None = setting(
        Flag(), "HTTP: route and forward each request on its own (default: yes, unless proxy_header)",
        default=None)
    pool_size: int | None = setting(
        Whole(check=positive), "HTTP per request: idle keep-alive connections kept per backend (16)",
        default=None)
    idle_timeout: float | None = setting(
        Number(), "HTTP per request: seconds an idle backend connection is kept (30)", default=None,
        check=positive)
    forwarded: str | None = setting(
        OneOf("x-forwarded", "forwarded", "both"),
        "HTTP per request: add X-Forwarded-For/-Proto/-Host, Forwarded, or both", default=None)
    max_body: int | None = setting(
        Whole(check=positive), "HTTP per request: larger request bodies are refused with 413",
        default=None)
    health_check: Any = setting(
        TableOf("a table", declaration=HealthCheckTable),
        "active health checks of the backends (TCP connect, or HTTP GET)", default=None,
    )
    timeouts: dict[str, float] | None = setting(
        TableOf("a table of timeouts", declaration=ProxyTimeoutsTable),
        "this route's own timeouts, overriding [timeouts]", default=None,
    )
    rewrite_via: Any = setting(
        _REWRITE_VIA,
        "net.tcp: point the Via record at the backend (true) or at this address",
        default=False,
    )


@dataclass(frozen=True)
class ProxyPlan:
    """A checked proxy value: the built backends and ProxyTarget's options."""

    backends: tuple[Any, ...]
    options: dict[str, Any]
    health: Any = None


def _file_problems(values: dict[str, Any], key_path: str, walk: Walk) -> bool:
    """Report a CA bundle or client certificate that does not load, at its own key."""
    from portmux.tls import CertificateError, client_tls_options

    bad = False
    for name in ("ca", "client_cert"):
        value = values.get(name)
        if value is INVALID:
            bad = True
        elif value is not None:
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


def _plan(values: dict[str, Any], key_path: str, endpoints_key: str, walk: Walk) -> Any:
    """Build every backend, using whichever options passed their own checks.

    A bad option does not hide a bad endpoint: each is reported at its own key.
    """
    bad_files = _file_problems(values, key_path, walk)
    endpoints = values["endpoints"]
    if endpoints is INVALID:
        return INVALID
    names = ("server_name",) if bad_files else ("ca", "client_cert", "server_name")
    tls = {n: values[n] for n in names if values.get(n) not in (None, INVALID)}
    backends = [_backend(item, join_key(endpoints_key, i), tls, walk) for i, item in enumerate(endpoints)]
    if any(v is INVALID for v in (*values.values(), *backends)) or bad_files:
        return INVALID
    options: dict[str, Any] = {}
    if values.get("connect_timeout") is not None:
        options["connect_timeout"] = float(values["connect_timeout"])
    for name in ("proxy_header", "per_request", "pool_size", "forwarded", "max_body"):
        if values.get(name) is not None:
            options[name] = values[name]
    if values.get("idle_timeout") is not None:
        options["idle_timeout"] = float(values["idle_timeout"])
    if values.get("timeouts"):
        options["timeouts"] = dict(values["timeouts"])
    if values.get("rewrite_via"):
        options["rewrite_via"] = values["rewrite_via"]
    return ProxyPlan(tuple(backends), options, values.get("health_check"))


@dataclass(frozen=True)
class _ProxyList(ListOf):
    """The short form: one client endpoint string, or an array of them."""

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        endpoints = super().convert(value, key_path, walk)
        return _plan({"endpoints": endpoints}, key_path, key_path, walk)


@dataclass(frozen=True)
class _ProxyTableOf(TableOf):
    """The table form, whose endpoints are checked even when another key is wrong."""

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        values, ok = read_table(schema_of(ProxyTable), value, key_path, walk)
        plan = _plan(values, key_path, join_key(key_path, "endpoints"), walk)
        return plan if ok else INVALID


PROXY_VALUE = AnyOf(
    "an array of client endpoint strings or a table with endpoints",
    choices=(
        _ProxyList(_ENDPOINTS.what, item=_ENDPOINTS.item, single=True, empty=_ENDPOINTS.empty),
        _ProxyTableOf(declaration=ProxyTable),
    ),
)


def build_proxy(plan: ProxyPlan, ctx: BuildContext) -> object:
    """An HttpProxyTarget (HTTP per request, the rest byte-for-byte) or, with
    ``per_request = false``, a ProxyTarget (every connection byte-for-byte)."""
    from portmux.targets.http_proxy import HttpProxyTarget
    from portmux.targets.proxy import ProxyTarget

    options = dict(plan.options)
    target: Any
    if options.get("per_request") is False:
        whole = ("connect_timeout", "proxy_header", "timeouts", "rewrite_via")
        target = ProxyTarget(ctx.reactor, list(plan.backends), **{k: v for k, v in options.items() if k in whole})
    else:
        target = HttpProxyTarget(ctx.reactor, list(plan.backends), **options)
    if plan.health is not None:
        from portmux.targets._health import HealthChecker

        target.health = HealthChecker(ctx.reactor, plan.health, label=target.description)
    return target
