# -*- test-case-name: tests.daemon.test_config -*-
"""The ``match`` table, declared by the core ``Match`` dataclass itself.

Its keys and their TOML types are read from ``Match``'s fields and type hints, so
the list of match keys is written once, in portmux.core.routing; only the rules
that go beyond a type (a known protocol name, an absolute path, silent/default
combinations) are written here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from portmux.core.routing import Match, Network
from portmux.daemon.config._checks import NETWORKS
from portmux.daemon.config._problems import describe, join_key
from portmux.daemon.config._schema import (
    INVALID,
    Check,
    Flag,
    Setting,
    Text,
    ValueType,
    Walk,
    Whole,
    read_table,
)

__all__ = ["MATCH_KEYS", "MISSING_MATCH", "MatchTable", "match_settings"]


def _known_protocol(value: str, key_path: str, walk: Walk) -> Any:
    known = walk.known_protocols()
    if value.lower() not in known:
        walk.problem(key_path, f"unknown protocol {value!r}; known: {', '.join(sorted(known))}")
        return INVALID
    return value


def _absolute_path(value: str, key_path: str, walk: Walk) -> Any:
    if not value.startswith("/"):
        walk.problem(key_path, f"must start with '/', got {describe(value)}")
        return INVALID
    return value


_CHECKS: Mapping[str, Check] = {"protocol": _known_protocol, "path": _absolute_path}
"""The rules beyond a key's type, by key."""

_TOML_TYPES: Mapping[object, ValueType] = {
    str | None: Text(),
    int | None: Whole(),
    bool: Flag(),
    tuple[Network, ...]: NETWORKS,
}
"""How a Match field's Python type is written in TOML."""


def match_settings() -> tuple[Setting, ...]:
    """One Setting per ``Match`` constructor field, typed from its type hint."""
    hints = typing.get_type_hints(Match)
    return tuple(
        Setting(
            f.name,
            _TOML_TYPES[hints[f.name]],
            f"the {f.name} to match (see docs/config.md)",
            default=f.default,
            check=_CHECKS.get(f.name),
        )
        for f in dataclasses.fields(Match)
        if f.init
    )


_SETTINGS = match_settings()
MATCH_KEYS: tuple[str, ...] = tuple(s.key for s in _SETTINGS)
_SPECIAL = ("silent", "default")
MISSING_MATCH = 'missing: e.g. match = { protocol = "http" } or { default = true }'


@dataclasses.dataclass(frozen=True)
class MatchTable(ValueType):
    """A route's or a reservation's ``match``: an inline table → a ``Match``."""

    what: str = 'an inline table like { protocol = "http" }'
    python: tuple[type, ...] = (dict,)

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        values, ok = read_table(_SETTINGS, value, key_path, walk)
        if not ok:
            return INVALID
        given = {s.key: values[s.key] for s in _SETTINGS if values[s.key] != s.default}
        special = [name for name in _SPECIAL if given.get(name)]
        if len(special) == 2:
            walk.problem(key_path, "silent and default cannot both be true")
            return INVALID
        if special:
            extra = [n for n in given if n not in (*_SPECIAL, "network")]
            if extra:
                walk.problem(
                    join_key(key_path, extra[0]),
                    f"a {special[0]} route matches only on network; remove {', '.join(extra)}",
                )
                return INVALID
        try:
            return Match(**given)
        except ValueError as error:  # a malformed service name or via base address
            walk.problem(key_path, str(error))
            return INVALID
