# -*- test-case-name: tests.daemon.test_config -*-
"""Finding the TOML line a key path is written on, so every problem can name its line.

tomllib gives values without positions; this small scanner of already-valid TOML
maps each key path (``("route", 3, "match", "sni")``) to its first line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["PathKey", "locate_lines", "split_key_path"]

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
