# -*- test-case-name: tests.daemon.test_config -*-
"""What a target kind's builder gets besides its checked value: the file's context and a reporter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portmux.core.mux import SniffSettings
from portmux.core.routing import Route
from portmux.daemon.config._checks import dotted_name
from portmux.daemon.config._problems import describe
from portmux.daemon.config._schema import INVALID

if TYPE_CHECKING:
    from portmux.daemon.config._document import Document

__all__ = ["BuildContext"]


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
    _document: Document = field(repr=False)
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
        self._document.problem(self.full_key(key), message)
        self._problems += 1

    def ok(self) -> bool:
        """True while no problem has been reported through this context."""
        return self._problems == 0

    def warn(self, key: str, message: str) -> None:
        """Report a warning at ``key``; ``portmux check`` prints it."""
        self._document.warn(self.full_key(key), message)

    def parse_routes(self, tables: object, key_prefix: str) -> list[Route]:
        """Check and build nested ``[[...route]]`` tables (e.g. behind a TLS target)."""
        key = self.full_key(key_prefix)
        if not isinstance(tables, list):
            self.problem(key, f"expected an array of tables ([[route]]), got {describe(tables)}")
            return []
        return self.build_routes(self._document.read_routes(tables, key))

    def build_routes(self, routes: Sequence[Any]) -> list[Route]:
        """Build routes already checked by a ``Routes()`` value (e.g. ``tls.route``)."""
        return self._document.build_routes(routes)

    def resolve_path(self, value: str) -> Path:
        """A file path from the config, relative to the config file's directory."""
        return (self.base_dir / Path(value).expanduser()).resolve()

    def import_object(self, dotted: object, key: str) -> object | None:
        """Import ``pkg.mod:attr`` (or ``pkg.mod.attr``); report a problem and return None on failure."""
        if not isinstance(dotted, str):
            self.problem(key, f'expected a dotted name like "pkg.mod:attr", got {describe(dotted)}')
            return None
        before = len(self._document.report.errors)
        found = dotted_name(dotted, self.full_key(key), self._document)
        self._problems += len(self._document.report.errors) - before
        return None if found is INVALID else found.obj
