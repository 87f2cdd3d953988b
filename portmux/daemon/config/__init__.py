# -*- test-case-name: tests.daemon.test_config -*-
"""TOML configuration → listeners, sniff settings and routes.

Every table is declared once (a dataclass with ``setting(...)`` fields) and one
walker checks a file against the declarations, collecting every problem as
``file:line: key.path: reason``, e.g.
``one-port.toml:14: route[3].match.sni: expected a string, got 42``.
A route's target key is a ``TargetKind``: built in, or a drop-in plugin.
"""

from portmux.control import Reservation
from portmux.daemon.config._checks import import_dotted
from portmux.daemon.config._context import BuildContext
from portmux.daemon.config._kinds import ITargetKind, PluginTargetKind, TargetKind
from portmux.daemon.config._lines import locate_lines, split_key_path
from portmux.daemon.config._load import (
    Config,
    check_config,
    default_config,
    load_config,
    parse_config,
    validate_file,
)
from portmux.daemon.config._match import MATCH_KEYS
from portmux.daemon.config._problems import ConfigError, ConfigProblem
from portmux.daemon.config._registry import RegistryConfig, read_stored_route
from portmux.daemon.config._schema import (
    INVALID,
    AnyOf,
    Anything,
    Exactly,
    Flag,
    ListOf,
    Number,
    OneOf,
    Routes,
    TableOf,
    Text,
    ValueType,
    Whole,
    setting,
)
from portmux.daemon.config._tables import ControlConfig, Listener
from portmux.daemon.config._targets import target_kinds

__all__ = [
    "INVALID",
    "MATCH_KEYS",
    "AnyOf",
    "Anything",
    "BuildContext",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ControlConfig",
    "Exactly",
    "Flag",
    "ITargetKind",
    "ListOf",
    "Listener",
    "Number",
    "OneOf",
    "PluginTargetKind",
    "RegistryConfig",
    "Reservation",
    "Routes",
    "TableOf",
    "TargetKind",
    "Text",
    "ValueType",
    "Whole",
    "check_config",
    "default_config",
    "import_dotted",
    "load_config",
    "locate_lines",
    "parse_config",
    "read_stored_route",
    "setting",
    "split_key_path",
    "target_kinds",
    "validate_file",
]
