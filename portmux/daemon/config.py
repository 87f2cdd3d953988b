# -*- test-case-name: tests.daemon.test_config,tests.protocols.test_tcpmux_naming,tests.tls.test_certificates -*-
"""TOML configuration → listeners, sniff settings and routes.

Every problem names the file, the line (when it can be found) and the TOML key
path, e.g. ``one-port.toml:14: route[3].match.sni: expected a string, got 42``.
All problems are collected, not just the first.
"""

from __future__ import annotations

import grp
import importlib
import ipaddress
import json
import pwd
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.web.resource import IResource

from portmux.core.mux import SniffSettings
from portmux.core.routing import ATTRIBUTE_KEYS, Match, Network, Route

if sys.version_info >= (3, 11):  # setup.cfg allows 3.10 with tomli
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "TARGET_BUILDERS",
    "BuildContext",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ControlConfig",
    "Listener",
    "Reservation",
    "check_config",
    "default_config",
    "import_dotted",
    "load_config",
    "parse_config",
    "validate_file",
]

# Target key → "module:function" builder, imported only when a route uses it.
# Each builder is called as ``builder(value, ctx: BuildContext)`` and returns an
# ITarget provider, or None after reporting its problems through ``ctx.problem``.
TARGET_BUILDERS: Mapping[str, str] = {
    "proxy": "portmux.targets.proxy:from_config",
    "resource": "portmux.daemon.config:build_resource",
    "factory": "portmux.daemon.config:build_factory",
    "tls": "portmux.targets.tls:from_config",
    "status": "portmux.daemon.admin:from_config",
    "help": "portmux.daemon.config:build_help",
    "echo": "portmux.daemon.config:build_echo",
}

MATCH_KEYS = (
    "protocol", "sni", "host", "alpn", "path", "service", "via", "network", "silent", "default",
    *ATTRIBUTE_KEYS,
)
ROUTE_KEYS = ("name", "match")
TOP_KEYS = ("listen", "sniff", "route", "control", "reservation")
DEFAULT_MAX_PENDING = 64


# -- values ------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One error or warning: where it is and a one-line reason."""

    filename: str
    line: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        if self.key_path:
            return f"{where}: {self.key_path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; ``errors`` lists every problem."""

    def __init__(self, errors: Sequence[ConfigProblem]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@dataclass(frozen=True)
class Listener:
    """One ``[[listen]]`` table: a server endpoint string and PROXY-header trust."""

    endpoint: str
    proxy_protocol: bool = False
    trusted: tuple[Network, ...] = ()


@dataclass(frozen=True)
class ControlConfig:
    """The ``[control]`` table: where workers register, and who may."""

    endpoint: str
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    max_pending: int = DEFAULT_MAX_PENDING


@dataclass(frozen=True)
class Reservation:
    """A ``[[reservation]]``: routes matching ``match`` may be registered only by ``uids``."""

    match: Match
    uids: tuple[int, ...]


@dataclass(frozen=True)
class Config:
    """A validated configuration, ready for ``Multiplexer(reactor, routes, settings=sniff)``."""

    listeners: tuple[Listener, ...]
    sniff: SniffSettings
    routes: tuple[Route, ...]
    control: ControlConfig | None = None
    reservations: tuple[Reservation, ...] = ()
    filename: str = "<config>"
    warnings: tuple[ConfigProblem, ...] = ()


# -- finding the line of a key path -------------------------------------------

PathKey = tuple[object, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_key_path(key_path: str) -> PathKey:
    """``route[3].match.sni`` → ``("route", 3, "match", "sni")``."""
    parts: list[object] = []
    for name, index in _PATH_PART.findall(key_path):
        parts.append(int(index) if index else name)
    return tuple(parts)


class _Locator:
    """Maps key paths to the line they are written on, by a small scan of valid TOML."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[PathKey, int] = {}
        self.arrays: dict[PathKey, int] = {}

    def scan(self) -> dict[PathKey, int]:
        try:
            self._document()
        except (IndexError, ValueError):
            pass  # good enough: keep what was found
        return self.lines

    # low-level helpers
    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def _skip(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance()
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self._advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    def _record(self, path: PathKey) -> None:
        self.lines.setdefault(path, self.line)

    def _string(self) -> str:
        quote = self._peek()
        if self._peek(3) == quote * 3:
            end = self.text.find(quote * 3, self.pos + 3)
            if end < 0:
                raise ValueError("unterminated string")
            while self.text.startswith(quote, end + 3):  # up to two extra quotes
                end += 1
            value = self.text[self.pos + 3 : end]
            self._advance(end + 3 - self.pos)
            return value
        i = self.pos + 1
        while i < len(self.text) and self.text[i] != quote:
            i += 2 if (quote == '"' and self.text[i] == "\\") else 1
        value = self.text[self.pos + 1 : i]
        self._advance(i + 1 - self.pos)
        return value

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            if self._peek() in ('"', "'"):
                parts.append(self._string())
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                if m is None:
                    raise ValueError("expected a key")
                parts.append(m.group())
                self._advance(len(m.group()))
            self._skip(newlines=False)
            if self._peek() != ".":
                return parts
            self._advance()

    def _resolve(self, parts: Sequence[str]) -> PathKey:
        out: list[object] = []
        for part in parts:
            out.append(part)
            count = self.arrays.get(tuple(out))
            if count is not None:
                out.append(count)
        return tuple(out)

    # grammar
    def _document(self) -> None:
        table: PathKey = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self._peek(2) == "[[":
                self._advance(2)
                parts = self._key()
                self._advance(2)  # ]]
                base = self._resolve(parts[:-1]) + (parts[-1],)
                index = self.arrays.get(base, -1) + 1
                self.arrays[base] = index
                table = base + (index,)
                self._record(base)
                self._record(table)
            elif self._peek() == "[":
                self._advance()
                parts = self._key()
                self._advance()  # ]
                table = self._resolve(parts)
                self._record(table)
            else:
                self._keyval(table)

    def _keyval(self, table: PathKey) -> None:
        parts = self._key()
        path = table
        for part in parts:
            path = path + (part,)
            self._record(path)
        self._skip(newlines=False)
        if self._peek() != "=":
            raise ValueError("expected =")
        self._advance()
        self._skip(newlines=False)
        self._value(path)

    def _value(self, path: PathKey) -> None:
        c = self._peek()
        if c == "{":
            self._advance()
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self._advance()
                    return
                if self._peek() == ",":
                    self._advance()
                    continue
                self._keyval(path)
        elif c == "[":
            self._advance()
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._advance()
                    return
                if self._peek() == ",":
                    self._advance()
                    continue
                self._record(path + (index,))
                self._value(path + (index,))
                index += 1
        elif c in ('"', "'"):
            self._string()
        elif c == "":
            raise ValueError("unexpected end")
        else:
            m = re.compile(r"[^,\]}\n#]+").match(self.text, self.pos)
            if m is None:
                raise ValueError("expected a value")
            self._advance(len(m.group()))


def locate_lines(text: str) -> dict[PathKey, int]:
    """Every key path found in ``text`` (already valid TOML) → its 1-based line."""
    return _Locator(text).scan()


# -- reporting -----------------------------------------------------------------


def describe(value: object) -> str:
    """A short TOML-style rendering of ``value`` for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def join_key(prefix: str, key: str | int) -> str:
    """Append a key or an array index to a key path."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


class _Reporter:
    """Collects errors and warnings, attaching line numbers from the locator."""

    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.text = text
        self._lines: dict[PathKey, int] | None = None
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def line_of(self, key_path: str) -> int | None:
        if self._lines is None:
            self._lines = locate_lines(self.text)
        path = split_key_path(key_path)
        while path:
            line = self._lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return None

    def problem(self, key_path: str, message: str) -> None:
        self.errors.append(
            ConfigProblem(self.filename, self.line_of(key_path), key_path, message)
        )

    def warn(self, key_path: str, message: str) -> None:
        self.warnings.append(
            ConfigProblem(self.filename, self.line_of(key_path), key_path, message)
        )


# -- builder context -------------------------------------------------------------


@dataclass
class BuildContext:
    """What a target builder gets besides its value.

    ``sniff_settings`` is the config's ``[sniff]`` (for nested sniffing stages).
    ``key_path`` is the route's path (``route[2]``); keys given to ``problem``,
    ``warn`` and ``parse_routes`` are relative to it (``"proxy[1]"``,
    ``"tls.route"``), though a full path starting with ``key_path`` is accepted too.
    """

    reactor: Any
    filename: str
    key_path: str
    base_dir: Path
    target_key: str
    _parser: _Parser = field(repr=False)
    sniff_settings: SniffSettings = field(default_factory=SniffSettings)
    probes: Sequence[Any] | None = None  # None: the Multiplexer's default probes
    _problems: int = field(default=0, repr=False)

    def full_key(self, key: str) -> str:
        """The absolute key path of ``key`` (relative to this route)."""
        if not key:
            return self.key_path
        if key == self.key_path or key.startswith((self.key_path + ".", self.key_path + "[")):
            return key
        if key.startswith("["):
            return self.key_path + key
        return f"{self.key_path}.{key}"

    def problem(self, key: str, message: str) -> None:
        """Report an error at ``key``; the config will not load."""
        self._parser.report.problem(self.full_key(key), message)
        self._problems += 1

    def ok(self) -> bool:
        """True while no problem has been reported through this context."""
        return self._problems == 0

    def warn(self, key: str, message: str) -> None:
        """Report a warning at ``key``; ``portmux check`` prints it."""
        self._parser.report.warn(self.full_key(key), message)

    def parse_routes(self, tables: object, key_prefix: str) -> list[Route]:
        """Parse nested ``[[...route]]`` tables (e.g. behind a TLS target) into Routes."""
        routes = list(self._parser.routes(tables, self.full_key(key_prefix)))
        self._parser.route_warnings(routes)
        return routes

    def resolve_path(self, value: str) -> Path:
        """A file path from the config, relative to the config file's directory."""
        return (self.base_dir / Path(value).expanduser()).resolve()

    def import_object(self, dotted: object, key: str) -> object | None:
        """Import ``pkg.mod:attr`` (or ``pkg.mod.attr``); report a problem and return None on failure."""
        if not isinstance(dotted, str) or not dotted.strip():
            self.problem(key, f"expected a dotted name like \"pkg.mod:attr\", got {describe(dotted)}")
            return None
        try:
            return import_dotted(dotted, self.base_dir)
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            self.problem(key, f"cannot import {dotted!r}: {_one_line(e)}")
            return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def import_dotted(dotted: str, extra_path: Path | None = None) -> object:
    """Resolve ``pkg.mod:attr.sub`` or ``pkg.mod.attr``; ``extra_path`` is searched last."""
    added = extra_path is not None and str(extra_path) not in sys.path
    if added:
        sys.path.append(str(extra_path))
    try:
        if ":" in dotted:
            module_name, _, attrs = dotted.partition(":")
            obj: object = importlib.import_module(module_name)
            for attr in attrs.split(".") if attrs else ():
                obj = getattr(obj, attr)
            return obj
        parts = dotted.split(".")
        missing: ModuleNotFoundError | None = None
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError as e:
                if e.name is not None and ".".join(parts[:i]).startswith(e.name):
                    missing = missing or e
                    continue
                raise
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                if missing is not None:
                    raise missing from None
                raise
            return obj
        return importlib.import_module(dotted)
    finally:
        if added:
            sys.path.remove(str(extra_path))


# -- built-in target builders ------------------------------------------------------


def _instance_of(
    obj: object, check: Callable[[object], bool], ctx: BuildContext, dotted: object
) -> object | None:
    """``obj`` if it passes ``check``, else what calling it returns if that passes."""
    if check(obj):
        return obj
    if callable(obj):
        try:
            made: object = obj()
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            ctx.problem(ctx.target_key, f"calling {dotted} failed: {_one_line(e)}")
            return None
        if check(made):
            return made
    return None


def build_resource(value: object, ctx: BuildContext) -> object | None:
    """``resource = "pkg.mod:attr"``: an IResource, or a callable returning one."""
    from portmux.targets.resource import ResourceTarget

    obj = ctx.import_object(value, ctx.target_key)
    if obj is None:
        return None
    resource = _instance_of(obj, IResource.providedBy, ctx, value)
    if resource is None:
        if ctx.ok():
            ctx.problem(ctx.target_key, f"{value} is not an IResource nor a callable returning one")
        return None
    return ResourceTarget(resource)  # type: ignore[arg-type]


def build_factory(value: object, ctx: BuildContext) -> object | None:
    """``factory = "pkg.mod:attr"``: an IProtocolFactory, or a callable returning one."""
    from portmux.targets.factory import FactoryTarget

    obj = ctx.import_object(value, ctx.target_key)
    if obj is None:
        return None
    factory = _instance_of(obj, IProtocolFactory.providedBy, ctx, value)
    if factory is None:
        if ctx.ok():
            ctx.problem(
                ctx.target_key, f"{value} is not an IProtocolFactory nor a callable returning one"
            )
        return None
    return FactoryTarget(factory)  # type: ignore[arg-type]


def _require_true(value: object, ctx: BuildContext) -> bool:
    if value is not True:
        ctx.problem(ctx.target_key, f"expected true, got {describe(value)}")
        return False
    return True


def build_help(value: object, ctx: BuildContext) -> object | None:
    """``help = true``: the TCPMUX HELP listing."""
    from portmux.targets.help import HelpTarget

    return HelpTarget() if _require_true(value, ctx) else None


def build_echo(value: object, ctx: BuildContext) -> object | None:
    """``echo = true``: an in-process echo service."""
    from portmux.targets.echo import EchoFactory
    from portmux.targets.factory import FactoryTarget

    factory: Any = EchoFactory()
    return FactoryTarget(factory) if _require_true(value, ctx) else None


def check_proxy_value(value: object, ctx: BuildContext) -> None:
    """Validate a ``proxy`` value's client endpoint strings without connecting."""
    from twisted.internet.endpoints import clientFromString

    key = ctx.target_key
    endpoints: object = value
    if isinstance(value, dict):
        endpoints = value.get("endpoints")
        key = f"{key}.endpoints"
        if endpoints is None:
            ctx.problem(key, "missing: list one or more client endpoint strings")
            return
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list) or not endpoints:
        ctx.problem(key, f"expected an array of client endpoint strings, got {describe(endpoints)}")
        return
    for i, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, str):
            ctx.problem(f"{key}[{i}]", f"expected a string, got {describe(endpoint)}")
            continue
        try:
            clientFromString(ctx.reactor, endpoint)
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            ctx.problem(f"{key}[{i}]", f"cannot parse client endpoint {endpoint!r}: {_one_line(e)}")


# -- the parser ----------------------------------------------------------------------


class _Parser:
    """Validates a parsed TOML document, collecting every problem."""

    def __init__(self, data: dict[str, Any], report: _Reporter, reactor: Any, base_dir: Path) -> None:
        self.data = data
        self.report = report
        self.reactor = reactor
        self.base_dir = base_dir
        self.route_names: dict[str, str] = {}
        self.sniff_settings = SniffSettings()
        self._builders: dict[str, Callable[..., object] | Exception] = {}
        self._known_protocols: frozenset[str] | None = None

    # typed getters
    def _expect(self, key: str, value: object, kind: type | tuple[type, ...], what: str) -> bool:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not ok:
            self.report.problem(key, f"expected {what}, got {describe(value)}")
        return ok

    def _unknown_keys(self, prefix: str, table: Mapping[str, object], known: Sequence[str]) -> None:
        for key in table:
            if key not in known:
                self.report.problem(join_key(prefix, key), f"unknown key; expected one of: {', '.join(known)}")

    def _array_of_tables(self, key: str) -> Iterator[tuple[str, dict[str, Any]]]:
        value = self.data.get(key, [])
        if isinstance(value, dict):
            self.report.problem(key, f"expected an array of tables: write [[{key}]], not [{key}]")
            return
        if not self._expect(key, value, list, f"an array of tables ([[{key}]])"):
            return
        for i, item in enumerate(value):
            path = join_key(key, i)
            if self._expect(path, item, dict, "a table"):
                yield path, item

    # sections
    def config(self, filename: str) -> Config:
        self._unknown_keys("", self.data, TOP_KEYS)
        listeners = tuple(self.listeners())
        sniff = self.sniff_settings = self.sniff()
        routes = tuple(self.routes(self.data.get("route", []), "route"))
        if not self.data.get("route"):
            self.report.warn("route", "no routes: every connection will be refused")
        control = self.control()
        reservations = tuple(self.reservations())
        self.route_warnings(routes)
        self.report.warnings.sort(key=_by_line)
        return Config(
            listeners=listeners,
            sniff=sniff,
            routes=routes,
            control=control,
            reservations=reservations,
            filename=filename,
            warnings=tuple(self.report.warnings),
        )

    def listeners(self) -> Iterator[Listener]:
        if "listen" not in self.data:
            self.report.problem("listen", "missing: add at least one [[listen]] table with an endpoint")
            return
        found = False
        for path, table in self._array_of_tables("listen"):
            found = True
            self._unknown_keys(path, table, ("endpoint", "proxy_protocol", "trusted"))
            endpoint = table.get("endpoint")
            ok = True
            if endpoint is None:
                self.report.problem(join_key(path, "endpoint"), "missing: a Twisted server endpoint string, e.g. \"tcp:8080\"")
                ok = False
            elif self._expect(join_key(path, "endpoint"), endpoint, str, "a server endpoint string"):
                ok = self._server_endpoint(join_key(path, "endpoint"), endpoint) and ok
            else:
                ok = False
            proxy_protocol = table.get("proxy_protocol", False)
            if not self._expect(join_key(path, "proxy_protocol"), proxy_protocol, bool, "true or false"):
                ok = False
            trusted = self._networks(join_key(path, "trusted"), table.get("trusted", []))
            if trusted is None:
                ok = False
            elif trusted and proxy_protocol is not True:
                self.report.warn(join_key(path, "trusted"), "has no effect without proxy_protocol = true")
            elif proxy_protocol is True and not trusted:
                self.report.warn(
                    join_key(path, "proxy_protocol"),
                    "no trusted networks: PROXY headers are accepted from any peer",
                )
            if ok:
                yield Listener(str(endpoint), bool(proxy_protocol), trusted or ())
        if not found and "listen" in self.data and isinstance(self.data["listen"], list):
            self.report.problem("listen", "empty: add at least one [[listen]] table with an endpoint")

    def _server_endpoint(self, key: str, endpoint: str) -> bool:
        from twisted.internet.endpoints import serverFromString

        try:
            serverFromString(self.reactor, endpoint)
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            self.report.problem(key, f"cannot parse server endpoint {endpoint!r}: {_one_line(e)}")
            return False
        return True

    def _networks(self, key: str, value: object) -> tuple[Network, ...] | None:
        if isinstance(value, str):
            value = [value]
        if not self._expect(key, value, list, "a CIDR string or an array of them"):
            return None
        out: list[Network] = []
        ok = True
        items: list[object] = value  # type: ignore[assignment]
        for i, item in enumerate(items):
            if not self._expect(join_key(key, i), item, str, "a CIDR string like \"10.0.0.0/8\""):
                ok = False
                continue
            try:
                out.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError as e:
                self.report.problem(join_key(key, i), f"not a network: {e}")
                ok = False
        return tuple(out) if ok else None

    def _number(self, key: str, value: object, integer: bool) -> float | int | None:
        kind: tuple[type, ...] = (int,) if integer else (int, float)
        if not self._expect(key, value, kind, "an integer" if integer else "a number"):
            return None
        if value <= 0:  # type: ignore[operator]
            self.report.problem(key, f"must be greater than 0, got {describe(value)}")
            return None
        return value  # type: ignore[return-value]

    def sniff(self) -> SniffSettings:
        table = self.data.get("sniff", {})
        if not self._expect("sniff", table, dict, "a table ([sniff])"):
            return SniffSettings()
        self._unknown_keys("sniff", table, ("preamble_timeout", "preamble_max_bytes", "silence_timeout"))
        defaults = SniffSettings()
        values: dict[str, Any] = {}
        for key, integer in (("preamble_timeout", False), ("preamble_max_bytes", True), ("silence_timeout", False)):
            if key in table:
                number = self._number(join_key("sniff", key), table[key], integer)
                if number is not None:
                    values[key] = float(number) if not integer else number
        settings = SniffSettings(**{**defaults.__dict__, **values})
        if settings.silence_timeout > settings.preamble_timeout:
            self.report.warn(
                "sniff.silence_timeout",
                "is longer than preamble_timeout; the silent route is chosen at most at preamble_timeout",
            )
        return settings

    def control(self) -> ControlConfig | None:
        if "control" not in self.data:
            return None
        table = self.data["control"]
        if not self._expect("control", table, dict, "a table ([control])"):
            return None
        self._unknown_keys("control", table, ("endpoint", "allow_uids", "allow_gids", "max_pending"))
        ok = True
        endpoint = table.get("endpoint")
        if endpoint is None:
            self.report.problem("control.endpoint", "missing: a server endpoint string, e.g. \"unix:/run/portmux.sock\"")
            ok = False
        elif not (
            self._expect("control.endpoint", endpoint, str, "a server endpoint string")
            and self._server_endpoint("control.endpoint", endpoint)
        ):
            ok = False
        uids = self._ids("control.allow_uids", table.get("allow_uids", []), user=True)
        gids = self._ids("control.allow_gids", table.get("allow_gids", []), user=False)
        max_pending = table.get("max_pending", DEFAULT_MAX_PENDING)
        if self._number("control.max_pending", max_pending, integer=True) is None:
            ok = False
        if not ok or uids is None or gids is None:
            return None
        return ControlConfig(str(endpoint), uids, gids, int(max_pending))

    def _ids(self, key: str, value: object, user: bool) -> tuple[int, ...] | None:
        what = "user" if user else "group"
        if not self._expect(key, value, list, f"an array of {what} ids or names"):
            return None
        out: list[int] = []
        ok = True
        items: list[object] = value  # type: ignore[assignment]
        for i, item in enumerate(items):
            path = join_key(key, i)
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                out.append(item)
            elif isinstance(item, str):
                try:
                    out.append(pwd.getpwnam(item).pw_uid if user else grp.getgrnam(item).gr_gid)
                except KeyError:
                    self.report.problem(path, f"no such {what}: {item!r}")
                    ok = False
            else:
                self.report.problem(path, f"expected a {what} id or name, got {describe(item)}")
                ok = False
        return tuple(out) if ok else None

    def reservations(self) -> Iterator[Reservation]:
        if "reservation" not in self.data:
            return
        for path, table in self._array_of_tables("reservation"):
            self._unknown_keys(path, table, ("match", "uids"))
            match = self.match(join_key(path, "match"), table.get("match"))
            if "uids" not in table:
                self.report.problem(join_key(path, "uids"), "missing: the user ids allowed to register these routes")
                continue
            uids = self._ids(join_key(path, "uids"), table["uids"], user=True)
            if match is not None and uids is not None:
                yield Reservation(match, uids)

    # routes
    def known_protocols(self) -> frozenset[str]:
        if self._known_protocols is None:
            from portmux.protocols import all_probes

            with warnings.catch_warnings():  # twisted.plugin's path-cache chatter
                warnings.simplefilter("ignore")
                names = frozenset(p.name for p in all_probes())
            self._known_protocols = names | {"unknown"}
        return self._known_protocols

    def match(self, key: str, table: object) -> Match | None:
        if table is None:
            self.report.problem(key, "missing: e.g. match = { protocol = \"http\" } or { default = true }")
            return None
        if not self._expect(key, table, dict, "an inline table like { protocol = \"http\" }"):
            return None
        assert isinstance(table, dict)
        self._unknown_keys(key, table, MATCH_KEYS)
        ok = True
        values: dict[str, Any] = {}
        for name in ("protocol", "sni", "host", "alpn", "path", "service", "via", *ATTRIBUTE_KEYS):
            if name in table:
                kind, wanted = (int, "an integer") if name == "level" else (str, "a string")
                if self._expect(join_key(key, name), table[name], kind, wanted):
                    values[name] = table[name]
                else:
                    ok = False
        for name in ("silent", "default"):
            if name in table:
                if self._expect(join_key(key, name), table[name], bool, "true or false"):
                    values[name] = table[name]
                else:
                    ok = False
        if "network" in table:
            networks = self._networks(join_key(key, "network"), table["network"])
            if networks is None:
                ok = False
            else:
                values["network"] = networks
        protocol = values.get("protocol")
        if protocol is not None:
            known = self.known_protocols()
            if protocol.lower() not in known:
                self.report.problem(
                    join_key(key, "protocol"),
                    f"unknown protocol {protocol!r}; known: {', '.join(sorted(known))}",
                )
                ok = False
        path = values.get("path")
        if path is not None and not path.startswith("/"):
            self.report.problem(join_key(key, "path"), f"must start with '/', got {describe(path)}")
            ok = False
        special = [n for n in ("silent", "default") if values.get(n)]
        if len(special) == 2:
            self.report.problem(key, "silent and default cannot both be true")
            ok = False
        elif special:
            extra = [n for n in values if n not in ("silent", "default", "network")]
            if extra:
                self.report.problem(
                    join_key(key, extra[0]),
                    f"a {special[0]} route matches only on network; remove {', '.join(extra)}",
                )
                ok = False
        if not ok:
            return None
        try:
            return Match(**values)
        except ValueError as error:  # a malformed service name or via base address
            self.report.problem(key, str(error))
            return None

    def routes(self, tables: object, prefix: str) -> Iterator[Route]:
        if not isinstance(tables, list):
            self.report.problem(prefix, f"expected an array of tables ([[route]]), got {describe(tables)}")
            return
        for i, table in enumerate(tables):
            path = join_key(prefix, i)
            if not self._expect(path, table, dict, "a table"):
                continue
            route = self.route(path, table)
            if route is not None:
                yield route

    def route(self, path: str, table: dict[str, Any]) -> Route | None:
        ok = True
        name = table.get("name")
        name_key = join_key(path, "name")
        if name is None:
            self.report.problem(name_key, "missing: every route needs a unique name")
            ok = False
        elif not self._expect(name_key, name, str, "a string"):
            ok = False
        elif not name:
            self.report.problem(name_key, "must not be empty")
            ok = False
        elif name in self.route_names:
            first = self.route_names[name]
            self.report.problem(name_key, f"duplicate route name {name!r} (first used by {first})")
            ok = False
        else:
            self.route_names[name] = path
        for key in table:
            if key not in ROUTE_KEYS and key not in TARGET_BUILDERS:
                self.report.problem(
                    join_key(path, key),
                    f"unknown key; expected name, match and one target: {', '.join(TARGET_BUILDERS)}",
                )
                ok = False
        match = self.match(join_key(path, "match"), table.get("match"))
        targets = [k for k in table if k in TARGET_BUILDERS]
        if not targets:
            self.report.problem(path, f"missing target: add one of {', '.join(TARGET_BUILDERS)}")
            return None
        if len(targets) > 1:
            self.report.problem(
                join_key(path, targets[1]), f"more than one target ({', '.join(targets)}); keep exactly one"
            )
            return None
        key = targets[0]
        target = self.build_target(path, key, table[key])
        if target is None or match is None or not ok:
            return None
        if match.path is not None and key not in ("resource", "status"):
            self.report.warn(
                join_key(path, "match.path"),
                f"a {key} target is chosen per connection from its first HTTP request; "
                "later keep-alive requests for other paths go to it too",
            )
        return Route(str(name), match, target)

    def builder(self, key: str) -> Callable[..., object] | Exception:
        if key not in self._builders:
            try:
                built = import_dotted(TARGET_BUILDERS[key])
                if not callable(built):
                    raise TypeError(f"{TARGET_BUILDERS[key]} is not callable")
                self._builders[key] = built
            except Exception as e:  # noqa: BLE001 - reported as "not available"
                self._builders[key] = e
        return self._builders[key]

    def build_target(self, path: str, key: str, value: object) -> object | None:
        ctx = BuildContext(
            self.reactor,
            self.report.filename,
            path,
            self.base_dir,
            key,
            self,
            sniff_settings=self.sniff_settings,
        )
        builder = self.builder(key)
        if isinstance(builder, Exception):
            if key == "proxy":
                check_proxy_value(value, ctx)
            self.report.problem(join_key(path, key), f"target {key!r} is not available: {_one_line(builder)}")
            return None
        before = len(self.report.errors)
        try:
            target = builder(value, ctx)
        except Exception as e:  # noqa: BLE001 - user code must not crash the check
            self.report.problem(join_key(path, key), _one_line(e))
            return None
        if len(self.report.errors) > before:
            return None
        if target is None:
            self.report.problem(join_key(path, key), f"target {key!r} could not be built")
        return target

    def route_warnings(self, routes: Sequence[Route]) -> None:
        seen: dict[Match, str] = {}
        catch_all: str | None = None
        first_silent: str | None = None
        first_default: str | None = None
        paths = dict(self.route_names)
        for route in routes:
            path = paths.get(route.name, "route")
            match = route.match
            if match.silent:
                if first_silent is not None:
                    self.report.warn(path, f"route {route.name!r} is never chosen: {first_silent} already takes silent connections")
                elif not match.network:
                    first_silent = path
                continue
            if match.default:
                if first_default is not None:
                    self.report.warn(path, f"route {route.name!r} is never chosen: {first_default} already takes the rest")
                elif not match.network:
                    first_default = path
                continue
            if catch_all is not None:
                self.report.warn(path, f"route {route.name!r} is never chosen: {catch_all} matches every connection first")
            elif match in seen:
                self.report.warn(path, f"route {route.name!r} is never chosen: {seen[match]} has the same match")
            else:
                seen[match] = path
            if match == Match() and catch_all is None:
                catch_all = path


# -- entry points -------------------------------------------------------------------


def _syntax_problem(filename: str, error: tomllib.TOMLDecodeError) -> ConfigProblem:
    text = str(error)
    m = re.search(r"\(at line (\d+), column \d+\)", text)
    line = int(m.group(1)) if m else None
    message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", text)
    return ConfigProblem(filename, line, "", f"invalid TOML: {message}")


def _parse(text: str, filename: str, reactor: Any, base_dir: Path) -> tuple[Config | None, _Reporter]:
    report = _Reporter(filename, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        report.errors.append(_syntax_problem(filename, e))
        return None, report
    config = _Parser(data, report, reactor, base_dir).config(filename)
    report.errors.sort(key=_by_line)
    report.warnings.sort(key=_by_line)
    return config, report


def _by_line(problem: ConfigProblem) -> float:
    return float("inf") if problem.line is None else problem.line


def parse_config(text: str, filename: str, reactor: Any, base_dir: Path | None = None) -> Config:
    """Validate TOML ``text``; raise ConfigError listing every problem.

    ``base_dir`` (default: the current directory) anchors relative paths and is
    searched last for the modules named by dotted names.
    """
    config, report = _parse(text, filename, reactor, base_dir or Path.cwd())
    if report.errors or config is None:
        raise ConfigError(report.errors)
    return config


def _read(path: str | Path) -> tuple[str | None, ConfigProblem | None]:
    try:
        return Path(path).read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return None, ConfigProblem(str(path), None, "", f"cannot read the file: {reason}")


def load_config(path: str | Path, reactor: Any = None) -> Config:
    """Read and validate the config file at ``path``; raise ConfigError on any problem."""
    text, problem = _read(path)
    if problem is not None or text is None:
        raise ConfigError([problem] if problem else [])
    return parse_config(text, str(path), _reactor(reactor), Path(path).resolve().parent)


def check_config(path: str | Path, reactor: Any = None) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """Validate the config file at ``path``: (errors, warnings), never raising for bad input."""
    _, errors, warnings = validate_file(path, reactor)
    return errors, warnings


def validate_file(
    path: str | Path, reactor: Any = None
) -> tuple[Config | None, list[ConfigProblem], list[ConfigProblem]]:
    """Validate the config file at ``path``: the Config (None on error), errors, warnings."""
    text, problem = _read(path)
    if problem is not None or text is None:
        return None, [problem] if problem else [], []
    config, report = _parse(text, str(path), _reactor(reactor), Path(path).resolve().parent)
    return (None if report.errors else config), report.errors, report.warnings


def default_config(reactor: Any) -> Config:
    """The embedded default: 127.0.0.1:8080 serving the status page, TCPMUX echo and HELP."""
    text = resources.files("portmux.daemon").joinpath("default.toml").read_text(encoding="utf-8")
    return parse_config(text, "<portmux default.toml>", reactor)


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor
