"""Tests for portmux.daemon.config: schema, key paths, line numbers, builders, warnings."""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, testing
from twisted.trial import unittest as trial

from portmux.core.mux import SniffSettings
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route
from portmux.daemon.config import (
    Anything,
    BuildContext,
    Config,
    ConfigError,
    ConfigProblem,
    TableOf,
    TargetKind,
    Text,
    Whole,
    check_config,
    default_config,
    load_config,
    locate_lines,
    parse_config,
    setting,
    split_key_path,
    target_kinds,
)
from portmux.targets.echo import EchoFactory
from portmux.targets.factory import FactoryTarget
from portmux.targets.help import HelpTarget
from portmux.targets.resource import ResourceTarget


def MemoryReactorClock() -> Any:
    """An untyped-call-free MemoryReactorClock."""
    return testing.MemoryReactorClock()


REPO = Path(__file__).resolve().parents[2]

LISTEN = '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'


def parse(text: str, base_dir: Path | None = None, kinds: Any = None) -> Config:
    return parse_config(textwrap.dedent(text), "t.toml", MemoryReactorClock(), base_dir, kinds)


def errors_of(text: str, base_dir: Path | None = None, kinds: Any = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir, kinds)
    return info.value.errors


def lines_of(text: str) -> list[str]:
    return [str(e) for e in errors_of(text)]


def one_error(text: str, kinds: Any = None, base_dir: Path | None = None) -> ConfigProblem:
    errors = errors_of(text, base_dir, kinds)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def kinds_with(*replaced: TargetKind) -> dict[str, Any]:
    """The installed target kinds with some replaced or added."""
    return {**target_kinds(), **{kind.name: kind for kind in replaced}}


def route(match: str, target: str, name: str = "r") -> str:
    return f'[[route]]\nname = "{name}"\nmatch = {match}\n{target}\n'


# -- a good config ---------------------------------------------------------------


def test_full_config_builds_routes_in_order() -> None:
    config = parse(
        LISTEN
        + """
[sniff]
preamble_timeout = 5
preamble_max_bytes = 4096
silence_timeout = 1.5
"""
        + route('{ protocol = "tcpmux", service = "echo" }', "echo = true", "echo")
        + route('{ protocol = "tcpmux", service = "help" }', "help = true", "help")
        + route(
            '{ protocol = "http", host = "*.example.com", path = "/app/" }',
            'resource = "twisted.web.resource:Resource"',
            "site",
        )
        + route(
            '{ protocol = "ssh", network = ["127.128.0.0/9", "::1"] }',
            'factory = "portmux.targets.echo:EchoFactory"',
            "ssh",
        )
        + route("{ default = true }", "echo = true", "rest")
    )
    assert [r.name for r in config.routes] == ["echo", "help", "site", "ssh", "rest"]
    assert config.sniff == SniffSettings(5.0, 4096, 1.5)
    assert isinstance(config.sniff.preamble_timeout, float)
    assert config.listeners[0].endpoint == "tcp:0:interface=127.0.0.1"
    assert config.filename == "t.toml"
    echo, help_, site, ssh, rest = config.routes
    assert isinstance(echo.target, FactoryTarget)
    assert isinstance(echo.target.factory, EchoFactory)
    assert isinstance(help_.target, HelpTarget)
    assert isinstance(site.target, ResourceTarget)
    assert site.match == Match(protocol="http", host="*.example.com", path="/app/")
    assert isinstance(ssh.target, FactoryTarget)
    assert ssh.match.network == (
        ipaddress.ip_network("127.128.0.0/9"),
        ipaddress.ip_network("::1/128"),
    )
    assert rest.match.default
    assert echo.match.accepts(Preamble(protocol="tcpmux", service="echo"))


def test_sniff_defaults_when_absent() -> None:
    config = parse(LISTEN + route("{ protocol = \"ssh\" }", "echo = true"))
    assert config.sniff == SniffSettings()
    assert config.control is None
    assert config.reservations == ()


def test_sniff_trace_networks() -> None:
    """``[sniff] trace``: the client networks whose routing is traced at debug level."""
    import ipaddress

    config = parse(LISTEN + '[sniff]\ntrace = ["127.0.0.1", "::1/128"]\n' + route("{ protocol = \"ssh\" }", "echo = true"))
    assert config.sniff.trace == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    errors = errors_of(LISTEN + '[sniff]\ntrace = ["nope"]\n' + route("{ protocol = \"ssh\" }", "echo = true"))
    assert [e.key_path for e in errors] == ["sniff.trace[0]"]


def test_listener_proxy_protocol_and_trusted() -> None:
    config = parse(
        """
[[listen]]
endpoint = "tcp:0"
proxy_protocol = true
trusted = ["127.0.0.1/32", "127.128.0.0/9"]
"""
        + route("{ protocol = \"ssh\" }", "echo = true")
    )
    listener = config.listeners[0]
    assert listener.proxy_protocol is True
    assert listener.trusted == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("127.128.0.0/9"),
    )


def test_network_as_single_string() -> None:
    config = parse(LISTEN + route('{ network = "127.96.0.0/16", protocol = "ssh" }', "echo = true"))
    assert config.routes[0].match.network == (ipaddress.ip_network("127.96.0.0/16"),)


def test_control_and_reservations() -> None:
    config = parse(
        LISTEN
        + """
[control]
endpoint = "unix:/tmp/portmux-test-control.sock"
allow_uids = [0, "root"]
allow_gids = [0]
max_pending = 8

[[reservation]]
match = { protocol = "http", host = "api.example.com" }
uids = [1000]
"""
        + route('{ protocol = "ssh" }', "echo = true")
    )
    assert config.control is not None
    assert config.control.endpoint == "unix:/tmp/portmux-test-control.sock"
    assert config.control.allow_uids == (0, 0)
    assert config.control.allow_gids == (0,)
    assert config.control.max_pending == 8
    assert len(config.reservations) == 1
    reservation = config.reservations[0]
    assert reservation.match == Match(protocol="http", host="api.example.com")
    assert reservation.uids == (1000,)


def test_control_errors() -> None:
    errors = lines_of(
        LISTEN
        + """
[control]
allow_uids = ["no-such-user-portmux"]
max_pending = 0
"""
        + route('{ protocol = "ssh" }', "echo = true")
    )
    assert any("control.endpoint: missing" in e for e in errors)
    assert any("control.allow_uids[0]: no such user: 'no-such-user-portmux'" in e for e in errors)
    assert any("control.max_pending: must be greater than 0, got 0" in e for e in errors)


# -- every error kind, with its key path and line ------------------------------------


def test_wrong_type_names_key_path_and_line() -> None:
    text = LISTEN + "\n" + route('{ protocol = "tls", sni = 42 }', "echo = true")
    error = one_error(text)
    assert str(error) == "t.toml:6: route[0].match.sni: expected a string, got 42"
    assert error.line == 6
    assert error.key_path == "route[0].match.sni"


def test_unknown_match_key() -> None:
    error = one_error(LISTEN + route('{ protocol = "tls", snii = "x" }', "echo = true"))
    assert error.key_path == "route[0].match.snii"
    assert error.message.startswith("unknown key")
    assert error.line == 5


def test_unknown_keys_everywhere() -> None:
    errors = errors_of(
        """
bogus = 1
[[listen]]
endpoint = "tcp:0"
colour = "red"
[sniff]
speed = 3
"""
        + route('{ protocol = "ssh" }', "echo = true\nextra = 1")
    )
    paths = [e.key_path for e in errors]
    assert paths == ["bogus", "listen[0].colour", "sniff.speed", "route[0].extra"]
    assert all("unknown key" in e.message for e in errors)
    assert [e.line for e in errors] == [2, 5, 7, 12]


def test_unknown_protocol() -> None:
    error = one_error(LISTEN + route('{ protocol = "smtpx" }', "echo = true"))
    assert error.key_path == "route[0].match.protocol"
    assert "unknown protocol 'smtpx'" in error.message
    assert "tls" in error.message and "ssh" in error.message


def test_protocol_names_are_case_insensitive_and_unknown_is_known() -> None:
    config = parse(
        LISTEN
        + route('{ protocol = "SSH" }', "echo = true", "a")
        + route('{ protocol = "unknown" }', "echo = true", "b")
    )
    assert config.routes[0].match.accepts(Preamble(protocol="ssh"))


def test_unparsable_server_endpoint() -> None:
    error = one_error('[[listen]]\nendpoint = "tcpx:80"\n' + route('{ protocol = "ssh" }', "echo = true"))
    assert error.key_path == "listen[0].endpoint"
    assert error.line == 2
    assert "cannot parse server endpoint 'tcpx:80'" in error.message
    assert "Unknown endpoint type" in error.message


def test_server_endpoint_is_not_bound() -> None:
    reactor = MemoryReactorClock()
    parse_config(LISTEN + route('{ protocol = "ssh" }', "echo = true"), "t.toml", reactor)
    assert reactor.tcpServers == []


def test_unparsable_client_endpoint_in_proxy() -> None:
    errors = errors_of(
        LISTEN + route('{ protocol = "ssh" }', 'proxy = ["tcp:127.0.0.1:22", "tcp:127.0.0.1", "bogus:x"]')
    )
    paths = [e.key_path for e in errors]
    assert "route[0].proxy[1]" in paths
    assert "route[0].proxy[2]" in paths
    assert "route[0].proxy[0]" not in paths
    assert all(e.line == 6 for e in errors)


def test_proxy_endpoints_validated_when_proxy_module_missing() -> None:
    proxy = target_kinds()["proxy"]
    missing = TargetKind("proxy", proxy.value, "portmux.targets.no_such_proxy:from_config")
    errors = errors_of(
        LISTEN
        + route('{ protocol = "ssh" }', 'proxy = ["tcp:127.0.0.1"]', "a")
        + route('{ protocol = "http" }', 'proxy = ["tcp:127.0.0.1:1"]', "b"),
        kinds=kinds_with(missing),
    )
    messages = {e.key_path: e.message for e in errors}
    assert "cannot parse client endpoint 'tcp:127.0.0.1'" in messages["route[0].proxy[0]"]
    assert messages["route[1].proxy"].startswith("target 'proxy' is not available: ModuleNotFoundError")


def test_target_not_available() -> None:
    handoff = TargetKind("handoff", Anything(), "portmux.no_such_module:from_config")
    error = one_error(
        LISTEN + route('{ protocol = "ssh" }', 'handoff = { worker = "x" }'), kinds=kinds_with(handoff)
    )
    assert error.key_path == "route[0].handoff"
    assert error.message == (
        "target 'handoff' is not available: "
        "ModuleNotFoundError: No module named 'portmux.no_such_module'"
    )


def test_dotted_name_that_does_not_import() -> None:
    errors = errors_of(
        LISTEN
        + route('{ protocol = "http" }', 'resource = "nosuch_pkg_portmux.site:root"', "a")
        + route('{ protocol = "ssh" }', 'factory = "portmux.targets.echo:NoSuchFactory"', "b")
        + route('{ protocol = "tcpmux" }', 'factory = "portmux.targets.nosuch.Factory"', "c")
    )
    assert [e.key_path for e in errors] == ["route[0].resource", "route[1].factory", "route[2].factory"]
    assert "cannot import 'nosuch_pkg_portmux.site:root': ModuleNotFoundError" in errors[0].message
    assert "AttributeError" in errors[1].message
    assert errors[2].message == (
        "cannot import 'portmux.targets.nosuch.Factory': "
        "AttributeError: module 'portmux.targets' has no attribute 'nosuch'"
    )
    assert [e.line for e in errors] == [6, 10, 14]


def test_dotted_name_of_wrong_kind() -> None:
    errors = errors_of(
        LISTEN
        + route('{ protocol = "http" }', 'resource = "portmux.targets.echo:EchoFactory"', "a")
        + route('{ protocol = "ssh" }', 'factory = "twisted.web.resource:Resource"', "b")
        + route('{ protocol = "ssh" }', "factory = 3", "c")
    )
    assert "not an IResource" in errors[0].message
    assert "not an IProtocolFactory" in errors[1].message
    assert errors[2].message == 'expected a dotted name like "pkg.mod:attr", got 3'


def test_dotted_forms(tmp_path: Path) -> None:
    config = parse(
        LISTEN
        + route('{ protocol = "ssh" }', 'factory = "portmux.targets.echo.EchoFactory"', "a")
        + route('{ protocol = "tcpmux" }', 'factory = "portmux.targets.echo:EchoFactory"', "b"),
    )
    assert all(isinstance(r.target, FactoryTarget) for r in config.routes)


def test_modules_beside_the_config_file_import(tmp_path: Path) -> None:
    module = "portmux_test_beside_" + tmp_path.name.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(
        "from twisted.web.static import Data\n"
        "def root():\n    return Data(b'hi', 'text/plain')\n"
    )
    path = tmp_path / "c.toml"
    path.write_text(LISTEN + route('{ protocol = "http" }', f'resource = "{module}:root"'))
    before = list(sys.path)
    try:
        config = load_config(path, MemoryReactorClock())
    finally:
        sys.modules.pop(module, None)
    assert isinstance(config.routes[0].target, ResourceTarget)
    assert sys.path == before


def test_duplicate_route_name() -> None:
    error = one_error(
        LISTEN
        + route('{ protocol = "ssh" }', "echo = true", "same")
        + route('{ protocol = "http" }', "echo = true", "same")
    )
    assert str(error) == "t.toml:8: route[1].name: duplicate route name 'same' (first used by route[0])"


def test_missing_target() -> None:
    error = one_error(LISTEN + '[[route]]\nname = "x"\nmatch = { protocol = "ssh" }\n')
    assert error.key_path == "route[0]"
    assert error.line == 3
    assert error.message.startswith("missing target: add one of proxy, resource, factory")


def test_two_targets() -> None:
    error = one_error(LISTEN + route('{ protocol = "ssh" }', 'echo = true\nhelp = true'))
    assert error.key_path == "route[0].help"
    assert error.line == 7
    assert error.message == "more than one target (echo, help); keep exactly one"


def test_missing_name_and_match() -> None:
    errors = errors_of(LISTEN + "[[route]]\necho = true\n")
    assert [e.key_path for e in errors] == ["route[0].name", "route[0].match"]
    assert all(e.message.startswith("missing") for e in errors)


def test_target_value_types() -> None:
    errors = errors_of(LISTEN + route('{ protocol = "tcpmux" }', "echo = 1", "a") + route('{ protocol = "tcpmux" }', 'help = "yes"', "b"))
    assert [(e.key_path, e.message) for e in errors] == [
        ("route[0].echo", "expected true, got 1"),
        ("route[1].help", 'expected true, got "yes"'),
    ]


def test_match_value_errors() -> None:
    errors = errors_of(
        LISTEN
        + route('{ protocol = "http", path = "app" }', "echo = true", "a")
        + route('{ network = ["127.128.0.0/33"] }', "echo = true", "b")
        + route('{ silent = "yes" }', "echo = true", "c")
        + route('{ silent = true, protocol = "ssh" }', "echo = true", "d")
        + route('{ silent = true, default = true }', "echo = true", "e")
        + route('"ssh"', "echo = true", "f")
    )
    got = {e.key_path: e.message for e in errors}
    assert got["route[0].match.path"] == "must start with '/', got \"app\""
    assert got["route[1].match.network[0]"].startswith("not a network")
    assert got["route[2].match.silent"] == 'expected true or false, got "yes"'
    assert got["route[3].match.protocol"].startswith("a silent route matches only on network")
    assert got["route[4].match"] == "silent and default cannot both be true"
    assert got["route[5].match"].startswith("expected an inline table")


def test_sniff_value_errors() -> None:
    errors = errors_of(
        LISTEN
        + """
[sniff]
preamble_timeout = -1
preamble_max_bytes = 1.5
silence_timeout = true
"""
        + route('{ protocol = "ssh" }', "echo = true")
    )
    assert [(e.key_path, e.message) for e in errors] == [
        ("sniff.preamble_timeout", "must be greater than 0, got -1"),
        ("sniff.preamble_max_bytes", "expected an integer, got 1.5"),
        ("sniff.silence_timeout", "expected a number, got true"),
    ]


def test_listen_errors() -> None:
    assert one_error(route('{ protocol = "ssh" }', "echo = true")).key_path == "listen"
    error = one_error('[listen]\nendpoint = "tcp:0"\n' + route('{ protocol = "ssh" }', "echo = true"))
    assert error.message == "expected an array of tables: write [[listen]], not [listen]"
    errors = errors_of(
        '[[listen]]\nendpoint = 80\ntrusted = ["nope"]\n[[listen]]\nproxy_protocol = 1\n'
        + route('{ protocol = "ssh" }', "echo = true")
    )
    assert [(e.key_path, e.line) for e in errors] == [
        ("listen[0].endpoint", 2),
        ("listen[0].trusted[0]", 3),
        ("listen[1].endpoint", 4),
        ("listen[1].proxy_protocol", 5),
    ]


def test_toml_syntax_error_has_line() -> None:
    error = one_error(LISTEN + "[[route]]\nname = \n")
    assert error.line == 4
    assert error.message.startswith("invalid TOML: ")
    assert "line" not in error.message


def test_several_errors_at_once_all_reported_in_line_order() -> None:
    text = """\
[[listen]]
endpoint = "nope:1"

[sniff]
preamble_timeout = "soon"

[[route]]
name = "a"
match = { protocol = "gopher", sni = 42 }
proxy = ["tcp:127.0.0.1:22"]

[[route]]
name = "a"
match = { protocol = "ssh" }

[[route]]
name = "c"
match = { protocol = "http" }
resource = "no_such_portmux_module:root"
echo = true
"""
    with pytest.raises(ConfigError) as info:
        parse(text)
    errors = info.value.errors
    assert [(e.line, e.key_path) for e in errors] == [
        (2, "listen[0].endpoint"),
        (5, "sniff.preamble_timeout"),
        (9, "route[0].match.sni"),
        (9, "route[0].match.protocol"),
        (12, "route[1]"),
        (13, "route[1].name"),
        (20, "route[2].echo"),
    ]
    # str() is one line per error
    lines = str(info.value).splitlines()
    assert len(lines) == len(errors) == 7
    assert lines[2] == "t.toml:9: route[0].match.sni: expected a string, got 42"


def test_problem_str_without_line_or_key() -> None:
    assert str(ConfigProblem("f.toml", None, "route[1]", "bad")) == "f.toml: route[1]: bad"
    assert str(ConfigProblem("f.toml", 3, "", "bad")) == "f.toml:3: bad"


# -- the line locator -------------------------------------------------------------------


def test_locate_lines_arrays_inline_tables_and_nested_tables() -> None:
    text = textwrap.dedent(
        """\
        # comment with [[route]] in it
        [[route]]
        name = "a"   # trailing comment
        match = { protocol = "tls", "quoted.key" = 'x' }
        proxy = [
          "tcp:a:1",  # first
          'tcp:b:2',
        ]
        [route.tls]
        cert = \"\"\"multi
        line\"\"\"
        [[route.tls.route]]
        name = "inner"
        [[route]]
        name = "b"
        a.b.c = 1
        """
    )
    lines = locate_lines(text)
    assert lines[("route", 0)] == 2
    assert lines[("route", 0, "name")] == 3
    assert lines[("route", 0, "match", "protocol")] == 4
    assert lines[("route", 0, "match", "quoted.key")] == 4
    assert lines[("route", 0, "proxy", 0)] == 6
    assert lines[("route", 0, "proxy", 1)] == 7
    assert lines[("route", 0, "tls")] == 9
    assert lines[("route", 0, "tls", "cert")] == 10
    assert lines[("route", 0, "tls", "route", 0)] == 12
    assert lines[("route", 0, "tls", "route", 0, "name")] == 13
    assert lines[("route", 1, "name")] == 15
    assert lines[("route", 1, "a", "b", "c")] == 16


def test_locate_lines_survives_garbage() -> None:
    assert isinstance(locate_lines("[[[ = = {"), dict)
    assert split_key_path("route[3].match.sni") == ("route", 3, "match", "sni")
    assert split_key_path("route[2].tls.route[0]") == ("route", 2, "tls", "route", 0)


def test_multiline_array_element_line() -> None:
    errors = errors_of(
        LISTEN
        + '[[route]]\nname = "a"\nmatch = { protocol = "ssh" }\nproxy = [\n  "tcp:127.0.0.1:22",\n  "tcp:nope",\n]\n'
    )
    assert [(e.key_path, e.line) for e in errors] == [("route[0].proxy[1]", 8)]


# -- builder context: nested routes and problems from builders --------------------------------


class _Nested:
    kind = "nested"
    description = "nested routes"

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes


def nested_builder(value: Any, ctx: BuildContext) -> Any:
    """A test builder: ``tls = { route = [...] }`` parsed through ctx.parse_routes."""
    assert ctx.key_path.startswith("route[")
    assert ctx.target_key == "tls"
    assert ctx.sniff_settings == SniffSettings(silence_timeout=1.0)
    if "cert" in value:
        ctx.problem("tls.cert", f"no such file: {ctx.resolve_path(value['cert'])}")
        return None
    routes = ctx.parse_routes(value.get("route", []), "tls.route")
    ctx.warn("tls", "just testing")
    return _Nested(routes)


def test_nested_routes_through_build_context() -> None:
    kinds = kinds_with(TargetKind("tls", Anything(), nested_builder))
    text = LISTEN + textwrap.dedent(
        """\
        [sniff]
        silence_timeout = 1
        [[route]]
        name = "outer"
        match = { protocol = "tls" }
        [route.tls]
        [[route.tls.route]]
        name = "inner-http"
        match = { protocol = "http" }
        echo = true
        [[route.tls.route]]
        name = "inner-bad"
        match = { protocol = "http", sni = 7 }
        echo = true
        """
    )
    with pytest.raises(ConfigError) as info:
        parse(text, kinds=kinds)
    [error] = info.value.errors
    assert str(error) == "t.toml:15: route[0].tls.route[1].match.sni: expected a string, got 7"

    config = parse(text.replace("sni = 7", 'sni = "x"').replace("inner-bad", "inner-2"), kinds=kinds)
    outer = config.routes[0]
    assert isinstance(outer.target, _Nested)
    assert [r.name for r in outer.target.routes] == ["inner-http", "inner-2"]
    assert [str(w) for w in config.warnings] == ["t.toml:8: route[0].tls: just testing"]

    shadowed = parse(text.replace("inner-bad", "inner-2").replace(", sni = 7", ""), kinds=kinds)
    assert [str(w) for w in shadowed.warnings] == [
        "t.toml:8: route[0].tls: just testing",
        (
            "t.toml:13: route[0].tls.route[1]: route 'inner-2' is never chosen: "
            "route[0].tls.route[0] has the same match"
        ),
    ]


def test_builder_problem_and_paths() -> None:
    kinds = kinds_with(TargetKind("tls", Anything(), nested_builder))
    error = one_error(
        LISTEN
        + "[sniff]\nsilence_timeout = 1\n"
        + route('{ protocol = "tls" }', 'tls = { cert = "certs/a.pem" }'),
        kinds,
    )
    assert error.key_path == "route[0].tls.cert"
    assert error.line == 8
    assert error.message == f"no such file: {(Path.cwd() / 'certs/a.pem').resolve()}"


def raising_builder(value: Any, ctx: BuildContext) -> Any:
    raise RuntimeError("boom\nsecond line")


def test_builder_exception_becomes_one_line_problem() -> None:
    kinds = kinds_with(TargetKind("tls", Anything(), f"{__name__}:raising_builder"))
    error = one_error(LISTEN + route('{ protocol = "tls" }', "tls = true"), kinds)
    assert (error.key_path, error.message) == ("route[0].tls", "RuntimeError: boom")


def test_nested_names_must_be_unique_across_levels() -> None:
    kinds = kinds_with(TargetKind("tls", Anything(), nested_builder))
    error = one_error(
        LISTEN
        + "[sniff]\nsilence_timeout = 1\n"
        + '[[route]]\nname = "x"\nmatch = { protocol = "tls" }\n'
        + 'tls = { route = [{ name = "x", match = { protocol = "http" }, echo = true }] }\n',
        kinds,
    )
    assert error.key_path == "route[0].tls.route[0].name"
    assert error.line == 8


# -- warnings ----------------------------------------------------------------------------


def test_warnings() -> None:
    config = parse(
        """
[[listen]]
endpoint = "tcp:0"
trusted = ["127.0.0.1/32"]
[[listen]]
endpoint = "tcp:0"
proxy_protocol = true
"""
        + route('{ protocol = "http", path = "/app/" }',
                'proxy = { endpoints = ["tcp:127.0.0.1:9000"], per_request = false }', "app")
        + route('{ protocol = "http", path = "/per-request/" }', 'proxy = ["tcp:127.0.0.1:9000"]', "pr")
        + route('{ protocol = "http", path = "/f/" }', 'factory = "portmux.targets.echo:EchoFactory"', "f")
        + route('{ protocol = "http", path = "/ok/" }', 'resource = "twisted.web.resource:Resource"', "ok")
        + route('{ protocol = "tcpmux", service = "echo" }', "echo = true", "e1")
        + route('{ protocol = "tcpmux", service = "echo" }', "echo = true", "e2")
        + route("{}", "echo = true", "all")
        + route('{ protocol = "ssh" }', "echo = true", "after")
        + route("{ silent = true }", "echo = true", "s1")
        + route("{ silent = true }", "echo = true", "s2")
    )
    got = [(w.key_path, w.message) for w in config.warnings]
    assert got[0] == ("listen[0].trusted", "has no effect without proxy_protocol = true")
    assert got[1][0] == "listen[1].proxy_protocol"
    assert got[2][0] == "route[0].match.path" and "first HTTP request" in got[2][1]
    assert got[3][0] == "route[2].match.path"  # not route[1]: a proxy forwards HTTP per request
    assert got[4] == ("route[5]", "route 'e2' is never chosen: route[4] has the same match")
    assert got[5] == ("route[7]", "route 'after' is never chosen: route[6] matches every connection first")
    assert got[6][0] == "route[9]" and "silent" in got[6][1]
    assert len(got) == 7


def test_no_routes_is_a_warning() -> None:
    config = parse(LISTEN)
    assert [w.key_path for w in config.warnings] == ["route"]


# -- files: default, example, check_config -------------------------------------------------


def test_default_config() -> None:
    config = default_config(MemoryReactorClock())
    assert [l.endpoint for l in config.listeners] == ["tcp:8080:interface=127.0.0.1"]
    assert [(r.name, r.kind) for r in config.routes] == [
        ("status", config.routes[0].kind),
        ("help", "help"),
        ("echo", "factory"),
    ]
    assert config.routes[0].match == Match(protocol="http")
    assert config.routes[1].match == Match(protocol="tcpmux", service="help")
    assert config.routes[2].match == Match(protocol="tcpmux", service="echo")
    assert config.sniff == SniffSettings()
    assert config.warnings == ()


def test_example_config_validates() -> None:
    path = REPO / "examples" / "one-port.toml"
    errors, warnings = check_config(path, MemoryReactorClock())
    assert errors == []
    assert warnings == []
    config = load_config(path, MemoryReactorClock())
    assert len(config.routes) == 8
    kinds = {r.name: r.kind for r in config.routes}
    assert kinds["demo-site"] == "resource"
    assert kinds["upper"] == "factory"


def test_check_config_reports_instead_of_raising(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(LISTEN + route('{ protocol = "ssh", sni = 1 }', "echo = true"))
    errors, _ = check_config(bad, MemoryReactorClock())
    assert [str(e) for e in errors] == [f"{bad}:5: route[0].match.sni: expected a string, got 1"]
    missing_errors, _ = check_config(tmp_path / "missing.toml", MemoryReactorClock())
    assert "cannot read the file: No such file or directory" in str(missing_errors[0])
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml", MemoryReactorClock())


# -- the echo target ----------------------------------------------------------------------------


def test_echo_factory_echoes() -> None:
    protocol: Any = EchoFactory().buildProtocol(None)
    transport: Any = testing.StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"hello")
    assert transport.value() == b"hello"


# -- the example served for real ---------------------------------------------------------------


def _exchange(port: int, data: bytes, until: bytes) -> bytes:
    """A blocking client: send ``data``, read until ``until`` appears or the peer closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while until not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


class ExampleServedTests(trial.TestCase):
    """examples/one-port.toml's in-process routes answer real sockets."""

    @defer.inlineCallbacks
    def test_demo_site_upper_echo_and_help(self) -> Any:
        from twisted.internet import reactor, threads

        from portmux.core.mux import Multiplexer

        config = load_config(REPO / "examples" / "one-port.toml", reactor)
        mux = Multiplexer(reactor, config.routes, settings=config.sniff)
        port = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        http = yield threads.deferToThread(
            _exchange,
            number,
            b"GET /demo/hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"in-process resource",
        )
        assert b"200 OK" in http
        assert b"hello from an in-process resource" in http
        upper = yield threads.deferToThread(_exchange, number, b"upper\r\nhello", b"HELLO")
        assert upper == b"+\r\nHELLO"
        echo = yield threads.deferToThread(_exchange, number, b"ECHO\r\nping", b"ping")
        assert echo == b"+\r\nping"
        listing = yield threads.deferToThread(_exchange, number, b"HELP\r\n", b"\0")
        assert listing == b"echo\r\nupper\r\n"


# -- nested TLS and proxy tables: every problem, each at its own key ---------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A directory holding server.pem (chain + key) and ca.pem, made with trustme."""
    import trustme

    ca = trustme.CA()
    ca.issue_cert("a.example.com").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path


TLS_ROUTE = """\
[[route]]
name = "https"
match = { protocol = "tls" }
[route.tls]
certificates = ["server.pem", "missing.pem", { cert = "server.pem", colour = 1 }]
alpn = ["h2", ""]
min_version = "TLSv9"
ciphers = "NO-SUCH-CIPHER"
unknown_sni = "ignore"
  [[route.tls.route]]
  name = "inner"
  match = { sni = "a.example.com" }
  proxy = { endpoints = ["tcp:127.0.0.1", "tls:127.0.0.1:9443"], ca = "no-ca.pem", connect_timeout = 0, proxy_header = "v3", spare = 1 }
  [[route.tls.route]]
  name = "inner-2"
  match = { protocol = "http", host = 3 }
  proxy = ["tcp:127.0.0.1:1", "bogus:x"]
"""


def test_every_problem_in_nested_tls_and_proxy_tables(certs: Path) -> None:
    errors = errors_of(LISTEN + TLS_ROUTE, base_dir=certs)
    got = [(e.line, e.key_path) for e in errors]
    assert got == [
        (7, "route[0].tls.certificates[1]"),
        (7, "route[0].tls.certificates[2].colour"),
        (8, "route[0].tls.alpn[1]"),
        (9, "route[0].tls.min_version"),
        (10, "route[0].tls.ciphers"),
        (11, "route[0].tls.unknown_sni"),
        (15, "route[0].tls.route[0].proxy.spare"),
        (15, "route[0].tls.route[0].proxy.proxy_header"),
        (15, "route[0].tls.route[0].proxy.connect_timeout"),
        (15, "route[0].tls.route[0].proxy.ca"),
        (15, "route[0].tls.route[0].proxy.endpoints[0]"),
        (18, "route[0].tls.route[1].match.host"),
        (19, "route[0].tls.route[1].proxy[1]"),
    ]
    messages = {e.key_path: e.message for e in errors}
    assert "missing.pem: cannot read" in messages["route[0].tls.certificates[1]"]
    assert messages["route[0].tls.min_version"].startswith("unknown TLS version 'TLSv9'")
    assert messages["route[0].tls.unknown_sni"] == 'expected "default" or "refuse", got "ignore"'
    assert messages["route[0].tls.route[0].proxy.connect_timeout"] == "must be greater than 0, got 0"
    assert messages["route[0].tls.route[0].proxy.proxy_header"] == 'expected "v1" or "v2", got "v3"'


def test_proxy_table_files_and_endpoints_each_reported(certs: Path) -> None:
    errors = errors_of(
        LISTEN
        + '[[route]]\nname = "p"\nmatch = { protocol = "ssh" }\n'
        + "[route.proxy]\n"
        + 'endpoints = ["tls:127.0.0.1:9443", "tcp:127.0.0.1", "tls:127.0.0.1:x"]\n'
        + 'ca = "no-ca.pem"\n'
        + 'client_cert = { cert = "server.pem", key = 7 }\n',
        base_dir=certs,
    )
    assert [(e.line, e.key_path) for e in errors] == [
        (7, "route[0].proxy.endpoints[1]"),
        (7, "route[0].proxy.endpoints[2]"),
        (8, "route[0].proxy.ca"),
        (9, "route[0].proxy.client_cert.key"),
    ]
    assert "no-ca.pem: cannot read the CA bundle" in errors[2].message


def test_bad_cipher_string_reported_at_its_own_key(certs: Path) -> None:
    error = one_error(
        LISTEN
        + '[[route]]\nname = "https"\nmatch = { protocol = "tls" }\n'
        + '[route.tls]\ncertificates = ["server.pem"]\nciphers = "NOT-A-CIPHER"\n',
        kinds=None,
        base_dir=certs,
    )
    assert (error.key_path, error.line) == ("route[0].tls.ciphers", 8)
    assert "'NOT-A-CIPHER'" in error.message


def test_tls_table_builds_a_terminating_target(certs: Path) -> None:
    from portmux.targets.tls import TLSTarget

    config = parse(
        LISTEN
        + '[sniff]\npreamble_timeout = 3\n'
        + '[[route]]\nname = "https"\nmatch = { protocol = "tls" }\n'
        + '[route.tls]\ncertificates = "server.pem"\nalpn = "h2"\nciphers = "ECDHE+AESGCM"\n'
        + '[[route.tls.route]]\nname = "in"\nmatch = { protocol = "http" }\nproxy = { endpoints = ["tls:127.0.0.1:9443"], ca = "ca.pem", server_name = "a.example.com", connect_timeout = 2 }\n',
        base_dir=certs,
    )
    target = config.routes[0].target
    assert isinstance(target, TLSTarget)
    assert target.store.names() == ("a.example.com",)
    assert target.inner.settings.preamble_timeout == 3.0
    [inner] = target.inner.router.routes
    assert inner.target.connect_timeout == 2.0


def test_match_keys_come_from_the_core_match() -> None:
    import dataclasses

    from portmux.daemon.config import MATCH_KEYS

    assert MATCH_KEYS == tuple(f.name for f in dataclasses.fields(Match) if f.init)
    error = one_error(LISTEN + route('{ protocol = "tls", snii = "x" }', "echo = true"))
    assert error.message == f"unknown key; expected one of: {', '.join(MATCH_KEYS)}"


# -- a drop-in target kind ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GreetingTable:
    """A test kind's table: ``greeting = { text = "hi", times = 2 }``."""

    text: str = setting(Text(), "what to say")
    times: int = setting(Whole(), "how often", default=1)


def build_greeting(table: GreetingTable, ctx: BuildContext) -> Any:
    from portmux.targets.echo import EchoFactory

    target = FactoryTarget(EchoFactory())  # type: ignore[arg-type]
    target.description = table.text * table.times
    return target


GREETING = TargetKind("greeting", TableOf(declaration=GreetingTable), build_greeting, "says hello")


def test_drop_in_target_kind_registers_and_parses() -> None:
    kinds = kinds_with(GREETING)
    config = parse(
        LISTEN + route('{ protocol = "ssh" }', 'greeting = { text = "hi ", times = 2 }'), kinds=kinds
    )
    assert config.routes[0].target.description == "hi hi "
    errors = errors_of(
        LISTEN
        + route('{ protocol = "ssh" }', "greeting = { times = true, loud = 1 }", "a")
        + route('{ protocol = "ssh" }', 'greeting = { text = "x" }\necho = true', "b"),
        kinds=kinds,
    )
    assert [(e.key_path, e.message) for e in errors] == [
        ("route[0].greeting.loud", "unknown key; expected one of: text, times"),
        ("route[0].greeting.text", "missing: what to say"),
        ("route[0].greeting.times", "expected an integer, got true"),
        ("route[1].echo", "more than one target (greeting, echo); keep exactly one"),
    ]
    assert "greeting" in one_error(LISTEN + '[[route]]\nname = "x"\nmatch = {}\n', kinds).message


def test_drop_in_target_kind_found_as_a_plugin(tmp_path: Path) -> None:
    """A PluginTargetKind in another sys.path entry's portmux/plugins is a route key."""
    import os
    import subprocess

    plugins = tmp_path / "portmux" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "greeting_kind.py").write_text(
        textwrap.dedent(
            """
            from portmux.daemon.config import PluginTargetKind, Text

            def build(value, ctx):
                from portmux.targets.help import HelpTarget
                return HelpTarget()

            KIND = PluginTargetKind("greeting", Text(), build, "says hello")
            SHADOW = PluginTargetKind("echo", Text(), build)  # a built-in name: ignored
            """
        )
    )
    (tmp_path / "c.toml").write_text(
        LISTEN + route('{ protocol = "tcpmux" }', 'greeting = "hi"', "g") + route("{}", "echo = true", "e")
    )
    script = textwrap.dedent(
        """
        from portmux.daemon.config import load_config, target_kinds
        from twisted.internet.testing import MemoryReactorClock
        print(",".join(target_kinds()))
        config = load_config("c.toml", MemoryReactorClock())
        print(",".join(r.kind for r in config.routes))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["proxy,resource,factory,tls,status,help,echo,greeting", "help,factory"]


def test_tls_example_checks_with_generated_certificates(tmp_path: Path) -> None:
    """examples/tls-443.toml is valid once its documented test certificates exist."""
    import shutil

    import trustme

    for name in ("tls-443.toml", "demo_site.py"):
        shutil.copy(REPO / "examples" / name, tmp_path / name)
    certs = tmp_path / "tls-certs"
    certs.mkdir()
    ca = trustme.CA()
    issued = ca.issue_cert("a.example.com", "b.example.com", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(certs / "server.pem"))
    issued.private_key_pem.write_to_path(str(certs / "server.key"))
    ca.cert_pem.write_to_path(str(certs / "client.pem"))
    errors, _ = check_config(tmp_path / "tls-443.toml", MemoryReactorClock())
    assert errors == []
