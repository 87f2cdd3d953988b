# -*- test-case-name: tests.daemon.test_config -*-
"""Entry points: TOML text or a file → a checked, built ``Config``, or every problem at once."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from portmux.control import Reservation
from portmux.core.limits import Limits, Timeouts
from portmux.core.mux import SniffSettings
from portmux.core.routing import Route
from portmux.daemon.config._document import Document
from portmux.daemon.config._kinds import TargetKind
from portmux.daemon.config._limits import default_limits
from portmux.daemon.config._problems import ConfigError, ConfigProblem, Reporter
from portmux.daemon.config._registry import RegistryConfig
from portmux.daemon.config._schema import INVALID, read_table, schema_of
from portmux.daemon.config._tables import (
    AccessLogConfig,
    ConfigFile,
    ControlConfig,
    Listener,
    ShutdownTable,
)
from portmux.daemon.config._targets import target_kinds

if sys.version_info >= (3, 11):  # setup.cfg allows 3.10 with tomli
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "check_config", "default_config", "load_config", "parse_config", "validate_file"]


@dataclass(frozen=True)
class Config:
    """A validated configuration, ready for ``Multiplexer(reactor, routes, settings=sniff)``."""

    listeners: tuple[Listener, ...]
    sniff: SniffSettings
    routes: tuple[Route, ...]
    control: ControlConfig | None = None
    reservations: tuple[Reservation, ...] = ()
    processes: int = 1
    registry: RegistryConfig | None = None
    filename: str = "<config>"
    warnings: tuple[ConfigProblem, ...] = ()
    access_log: AccessLogConfig | None = None
    grace_period: float = 30.0
    limits: Limits = field(default_factory=Limits)
    """``[limits]``; without the table, the automatic global cap."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """``[timeouts]``."""


def _valid(value: Any, fallback: Any) -> Any:
    return fallback if value is INVALID else value


def _build(data: dict[str, Any], document: Document, filename: str) -> Config:
    """Check every table of ``data``, then build the routes; problems go to the document."""
    values, _ = read_table(schema_of(ConfigFile), data, "", document)
    document.sniff_settings = _valid(values["sniff"], SniffSettings())
    routes = tuple(document.build_routes(_valid(values["route"], ())))
    if not data.get("route"):
        document.warn("route", "no routes: every connection will be refused")
    processes = _valid(values["processes"], 1)
    report = document.report
    report.in_line_order()
    return Config(
        listeners=_valid(values["listen"], ()),
        sniff=document.sniff_settings,
        routes=routes,
        control=_valid(values["control"], None),
        reservations=tuple(
            Reservation(table.match, table.uids) for table in _valid(values["reservation"], ())
        ),
        processes=processes,
        registry=_valid(values["registry"], None),
        filename=filename,
        warnings=tuple(report.warnings),
        access_log=_valid(values["access_log"], None),
        grace_period=float(_valid(values["shutdown"], ShutdownTable()).grace_period),
        limits=_valid(values["limits"], None) or default_limits(),
        timeouts=_valid(values["timeouts"], Timeouts()),
    )


def _syntax_problem(filename: str, error: tomllib.TOMLDecodeError) -> ConfigProblem:
    text = str(error)
    m = re.search(r"\(at line (\d+), column \d+\)", text)
    line = int(m.group(1)) if m else None
    message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", text)
    return ConfigProblem(filename, line, "", f"invalid TOML: {message}")


def _parse(
    text: str, filename: str, reactor: Any, base_dir: Path, kinds: Mapping[str, TargetKind] | None
) -> tuple[Config | None, Reporter]:
    report = Reporter(filename, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        report.errors.append(_syntax_problem(filename, e))
        return None, report
    document = Document(report, reactor, base_dir, target_kinds() if kinds is None else kinds)
    return _build(data, document, filename), report


def parse_config(
    text: str,
    filename: str,
    reactor: Any,
    base_dir: Path | None = None,
    kinds: Mapping[str, TargetKind] | None = None,
) -> Config:
    """Validate TOML ``text``; raise ConfigError listing every problem.

    ``base_dir`` (default: the current directory) anchors relative paths and is
    searched last for the modules named by dotted names.  ``kinds`` (default:
    ``target_kinds()``, built-ins and drop-in plugins) are the route target keys.
    """
    config, report = _parse(text, filename, reactor, base_dir or Path.cwd(), kinds)
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
    config, report = _parse(text, str(path), _reactor(reactor), Path(path).resolve().parent, None)
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
