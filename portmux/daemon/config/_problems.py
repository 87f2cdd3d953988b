# -*- test-case-name: tests.daemon.test_config -*-
"""The one error reporter: problems as ``file:line: key.path: reason``, collected, never raised early."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from portmux.daemon.config._lines import PathKey, locate_lines, split_key_path

__all__ = ["ConfigError", "ConfigProblem", "Reporter", "describe", "join_key", "one_line"]


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


def describe(value: object) -> str:
    """A short TOML-style rendering of ``value`` for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def join_key(prefix: str, key: str | int) -> str:
    """Append a key or an array index to a key path."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def one_line(error: BaseException) -> str:
    """``ExceptionType: first line of its message``, for problems raised by other code."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class Reporter:
    """Collects errors and warnings for one file, attaching the line of each key path."""

    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.text = text
        self._lines: dict[PathKey, int] | None = None
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def line_of(self, key_path: str) -> int | None:
        """The line of ``key_path``, or of its nearest written ancestor."""
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
        """Record an error at ``key_path``."""
        self.errors.append(ConfigProblem(self.filename, self.line_of(key_path), key_path, message))

    def warn(self, key_path: str, message: str) -> None:
        """Record a warning at ``key_path``."""
        self.warnings.append(ConfigProblem(self.filename, self.line_of(key_path), key_path, message))

    def in_line_order(self) -> None:
        """Sort errors and warnings by line (stable: same-line problems keep their order)."""
        self.errors.sort(key=_by_line)
        self.warnings.sort(key=_by_line)


def _by_line(problem: ConfigProblem) -> float:
    return float("inf") if problem.line is None else problem.line
