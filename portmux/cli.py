# -*- test-case-name: tests.test_cli,tests.test_layers -*-
"""The ``portmux`` command: ``check`` configs, ``explain`` routing, ``connect`` to services, list ``routes``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Subcommands implemented in other modules, wired lazily: name → (module,
# function adding the arguments, function running it, one-line help).
EXTERNAL_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "connect": (
        "portmux.client.cli",
        "add_connect_arguments",
        "run_connect",
        "connect to a service by name and bridge stdin/stdout (ssh ProxyCommand)",
    ),
    "services": (
        "portmux.client.cli",
        "add_services_arguments",
        "run_services",
        "list the TCPMUX service names a portmux port answers (HELP)",
    ),
    "explain": (
        "portmux.daemon.explain",
        "add_explain_arguments",
        "run_explain",
        "show why given first bytes get their route: probes, preamble, every route, the target",
    ),
    "routes": (
        "portmux.control.cli",
        "add_routes_arguments",
        "run_routes",
        "list the routes of a running portmux, registered ones included",
    ),
}

NOT_AVAILABLE = 2


@dataclass
class _Unavailable:
    """Stands in for a subcommand whose module does not import."""

    command: str
    reason: str

    def __call__(self, args: argparse.Namespace) -> int:
        print(f"portmux {self.command}: not available: {self.reason}", file=sys.stderr)
        return NOT_AVAILABLE


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``portmux check``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="TOML config file(s) to validate")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print errors only, no warnings or summary"
    )


def run_check(args: argparse.Namespace) -> int:
    """Validate each file; print errors (and warnings) to stderr; 1 if any file is bad."""
    from portmux.daemon.config import validate_file

    status = 0
    for filename in args.files:
        config, errors, warnings = validate_file(filename)
        for error in errors:
            print(error, file=sys.stderr)
        if not args.quiet:
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
        if errors or config is None:
            status = 1
            continue
        if not args.quiet:
            print(
                f"{filename}: ok ({_plural(len(config.listeners), 'listener')}, "
                f"{_plural(len(config.routes), 'route')})"
            )
            for line in _proxy_choices(config.routes):
                print(line)
    return status


def _proxy_choices(routes: Any, depth: int = 1) -> list[str]:
    """One line per proxy route saying whether HTTP is forwarded per request or per connection, and why."""
    lines = []
    for route in routes:
        target = route.target
        inner = getattr(getattr(target, "inner", None), "router", None)
        if inner is not None:
            lines += _proxy_choices(inner.static_routes, depth + 1)
        if getattr(target, "kind", None) != "proxy" or route.match.protocol not in (None, "http"):
            continue
        if getattr(target, "per_request", False):
            why = ("HTTP per request: each request is matched on Host and path and forwarded over "
                   "pooled keep-alive connections; other protocols byte-for-byte")
        elif getattr(target, "whole", None) is not None:
            why = "per connection: proxy_header is set, and a PROXY header describes a whole connection"
        else:
            why = ("per connection (per_request = false): bytes copied as they are; every request "
                   "on a connection goes to this route's backends")
        lines.append(f"{'  ' * depth}route {route.name!r}: proxy {why}")
    return lines


def package_version() -> str:
    """The installed distribution's version, or "unknown" when run from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("portmux")
    except PackageNotFoundError:
        return "unknown"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _wire_external(
    sub: Any, name: str, module_name: str, add_name: str, run_name: str, help_text: str
) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    try:
        module = importlib.import_module(module_name)
        add: Callable[[argparse.ArgumentParser], None] = getattr(module, add_name)
        run: Callable[[argparse.Namespace], int] = getattr(module, run_name)
        add(parser)
    except Exception as e:  # noqa: BLE001 - a missing or broken module: the command says so
        reason = f"{type(e).__name__}: {e}"
        parser.description = f"{help_text} (not available: {reason})"
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(run=_Unavailable(name, reason))
        return
    parser.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="portmux",
        description="One TCP port, every service. Run the server with `twistd -n portmux`.",
    )
    parser.add_argument("--version", action="version", version=f"portmux {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="validate config files and report every problem with its TOML key path",
        description="Validate portmux TOML config files. Exit status 1 if any has an error.",
    )
    add_check_arguments(check)
    check.set_defaults(run=run_check)
    for name, (module_name, add_name, run_name, help_text) in EXTERNAL_COMMANDS.items():
        _wire_external(sub, name, module_name, add_name, run_name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``portmux`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    run = getattr(args, "run", None)
    if extra and not isinstance(run, _Unavailable):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if run is None:
        parser.print_help(sys.stderr)
        return NOT_AVAILABLE
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
