# -*- test-case-name: tests.daemon.test_config -*-
"""Checks shared by declarations: each ``check(value, key_path, walk)`` returns a value or INVALID.

Endpoint strings are checked by parsing them (never listening nor connecting), dotted
names by importing them, networks and ids by converting them.
"""

from __future__ import annotations

import grp
import ipaddress
import pkgutil
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portmux.daemon.config._problems import describe, one_line
from portmux.daemon.config._schema import INVALID, ListOf, Text, ValueType, Walk

__all__ = [
    "NETWORKS",
    "DottedName",
    "GroupId",
    "UserId",
    "dotted_name",
    "import_dotted",
    "network",
    "positive",
    "server_endpoint",
]


def positive(value: float, key_path: str, walk: Walk) -> Any:
    """A number greater than 0."""
    if value <= 0:
        walk.problem(key_path, f"must be greater than 0, got {describe(value)}")
        return INVALID
    return value


def server_endpoint(value: str, key_path: str, walk: Walk) -> Any:
    """A Twisted server endpoint string that parses (nothing is bound)."""
    from twisted.internet.endpoints import serverFromString

    if value.startswith("systemd:"):  # the sockets exist only when systemd starts portmux
        options = dict(part.partition("=")[::2] for part in value.split(":")[1:])
        if not options.keys() <= {"domain", "index", "name"} or not {"index", "name"} & options.keys():
            walk.problem(key_path, f"{value!r}: use systemd:domain=INET:name=NAME (or :index=N)")
            return INVALID
        return value
    try:
        serverFromString(walk.reactor, value)
    except Exception as e:  # noqa: BLE001 - user input must not crash the check
        walk.problem(key_path, f"cannot parse server endpoint {value!r}: {one_line(e)}")
        return INVALID
    return value


def network(value: str, key_path: str, walk: Walk) -> Any:
    """A CIDR string → an ip_network (host bits allowed)."""
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        walk.problem(key_path, f"not a network: {e}")
        return INVALID


NETWORKS = ListOf(
    "a CIDR string or an array of them",
    item=Text('a CIDR string like "127.128.0.0/9"', check=network),
    single=True,
)


@dataclass(frozen=True)
class _Ident(ValueType):
    """A user or group: a non-negative id, or a name resolved when the config loads."""

    python: tuple[type, ...] = (int, str)
    user: bool = True

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        )

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        if isinstance(value, int):
            return value
        try:
            return pwd.getpwnam(value).pw_uid if self.user else grp.getgrnam(value).gr_gid
        except KeyError:
            walk.problem(key_path, f"no such {'user' if self.user else 'group'}: {value!r}")
            return INVALID


UserId = _Ident("a user id or name", user=True)
GroupId = _Ident("a group id or name", user=False)


@dataclass(frozen=True)
class DottedName:
    """A dotted name from the config and the object it imported."""

    text: str
    obj: object


def import_dotted(dotted: str, extra_path: Path | None = None) -> object:
    """Resolve ``pkg.mod:attr.sub`` or ``pkg.mod.attr`` (pkgutil.resolve_name); ``extra_path`` is searched last."""
    added = extra_path is not None and str(extra_path) not in sys.path
    if added:
        sys.path.append(str(extra_path))
    try:
        return pkgutil.resolve_name(dotted)
    finally:
        if added:
            sys.path.remove(str(extra_path))


def dotted_name(value: str, key_path: str, walk: Walk) -> Any:
    """Import the object a dotted name names, from sys.path then the config's directory."""
    if not value.strip():
        walk.problem(key_path, f'expected a dotted name like "pkg.mod:attr", got {describe(value)}')
        return INVALID
    try:
        return DottedName(value, import_dotted(value, walk.base_dir))
    except Exception as e:  # noqa: BLE001 - user code must not crash the check
        walk.problem(key_path, f"cannot import {value!r}: {one_line(e)}")
        return INVALID
