# -*- test-case-name: tests.daemon.test_config -*-
"""Declaring a TOML table once, and the one walker that checks values against declarations.

A table is a frozen dataclass whose fields carry ``setting(...)`` metadata: how the
TOML value is read (a ``ValueType``), whether it is required, its default, a check
and a doc string.  ``read_table`` walks a table against such a declaration and
reports *every* problem, nested tables and arrays included, through the ``Walk``
it is given; a value that failed is the ``INVALID`` sentinel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from portmux.daemon.config._problems import describe, join_key

__all__ = [
    "INVALID",
    "AnyOf",
    "Anything",
    "Check",
    "Exactly",
    "Flag",
    "ListOf",
    "Number",
    "OneOf",
    "Routes",
    "Setting",
    "TableOf",
    "Text",
    "ValueType",
    "Walk",
    "Whole",
    "read_declared",
    "read_table",
    "schema_of",
    "setting",
]


class _Invalid:
    """The value of something that failed a check (its problem is already reported)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()
_SETTING = "portmux.config.setting"


class Walk(Protocol):
    """What checks need while a file is walked: a place to report, and the file's context."""

    reactor: Any
    base_dir: Path

    def problem(self, key_path: str, message: str) -> None: ...

    def warn(self, key_path: str, message: str) -> None: ...

    def known_protocols(self) -> frozenset[str]: ...

    def read_routes(self, value: list[Any], key_path: str) -> Any: ...

    def claim_route_name(self, name: str, key_path: str) -> str | None:
        """Record that ``key_path`` uses route ``name``; the first user's path if already taken."""


Check = Callable[[Any, str, Walk], Any]
"""``check(value, key_path, walk)`` → the (possibly converted) value, or INVALID after reporting."""


# -- value types ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ValueType:
    """How one TOML value is read: the Python types it may have, a conversion, a check."""

    what: str
    python: tuple[type, ...] = (object,)
    check: Check | None = None

    def accepts(self, value: object) -> bool:
        """Whether ``value`` has this type's shape (``true`` is never a number)."""
        if isinstance(value, bool) and bool not in self.python and object not in self.python:
            return False
        return isinstance(value, self.python)

    def read(self, value: object, key_path: str, walk: Walk) -> Any:
        """The converted value, or INVALID after reporting at ``key_path``."""
        if not self.accepts(value):
            walk.problem(key_path, f"expected {self.what}, got {describe(value)}")
            return INVALID
        out = self.convert(value, key_path, walk)
        if out is INVALID or self.check is None:
            return out
        return self.check(out, key_path, walk)

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        """Turn an accepted value into the declared Python value (identity by default)."""
        return value


def Text(what: str = "a string", check: Check | None = None) -> ValueType:
    """A TOML string."""
    return ValueType(what, (str,), check)


def Flag() -> ValueType:
    """``true`` or ``false``."""
    return ValueType("true or false", (bool,))


def Whole(check: Check | None = None) -> ValueType:
    """A TOML integer."""
    return ValueType("an integer", (int,), check)


@dataclasses.dataclass(frozen=True)
class Number(ValueType):
    """An integer or a float (kept as written, so messages quote it as written)."""

    what: str = "a number"
    python: tuple[type, ...] = (int, float)


@dataclasses.dataclass(frozen=True)
class Exactly(ValueType):
    """One literal value, e.g. ``status = true``."""

    expected: object = True

    def accepts(self, value: object) -> bool:
        return type(value) is type(self.expected) and value == self.expected


@dataclasses.dataclass(frozen=True)
class _OneOf(ValueType):
    choices: tuple[str, ...] = ()

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) and value in self.choices


def OneOf(*choices: str) -> ValueType:
    """One of a few strings."""
    return _OneOf(" or ".join(describe(c) for c in choices), (str,), None, choices)


def Anything(what: str = "a value") -> ValueType:
    """Any value, unchecked: for target kinds that read their own value."""
    return ValueType(what)


@dataclasses.dataclass(frozen=True)
class ListOf(ValueType):
    """An array whose items are each read with ``item`` (reported at ``key[i]``)."""

    item: ValueType = dataclasses.field(default_factory=Text)
    single: bool = False
    """Also accept one bare item, as if it were a one-item array."""
    empty: str | None = None
    """If set, an empty array is a problem with this message."""
    python: tuple[type, ...] = (list,)

    def accepts(self, value: object) -> bool:
        return isinstance(value, list) or (self.single and self.item.accepts(value))

    def read(self, value: object, key_path: str, walk: Walk) -> Any:
        if isinstance(value, dict) and isinstance(self.item, TableOf) and not self.single:
            name = key_path.rsplit(".", 1)[-1]
            walk.problem(key_path, f"expected an array of tables: write [[{name}]], not [{name}]")
            return INVALID
        return super().read(value, key_path, walk)

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        items = value if isinstance(value, list) else [value]
        if not items and self.empty is not None:
            walk.problem(key_path, self.empty)
            return INVALID
        out = [self.item.read(item, join_key(key_path, i), walk) for i, item in enumerate(items)]
        return INVALID if any(v is INVALID for v in out) else tuple(out)


@dataclasses.dataclass(frozen=True)
class TableOf(ValueType):
    """A (possibly inline) table declared by the dataclass ``declaration``."""

    declaration: type | None = None
    python: tuple[type, ...] = (dict,)
    what: str = "a table"

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        assert self.declaration is not None
        return read_declared(self.declaration, value, key_path, walk)


@dataclasses.dataclass(frozen=True)
class AnyOf(ValueType):
    """The first of ``choices`` whose shape fits, e.g. a path or a ``{ cert, key }`` table."""

    choices: tuple[ValueType, ...] = ()

    def accepts(self, value: object) -> bool:
        return any(choice.accepts(value) for choice in self.choices)

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        choice = next(c for c in self.choices if c.accepts(value))
        return choice.read(value, key_path, walk)


@dataclasses.dataclass(frozen=True)
class Routes(ValueType):
    """An array of route tables, read by the walk's route reader (same checks at every depth)."""

    what: str = "an array of tables ([[route]])"
    python: tuple[type, ...] = (list,)

    def convert(self, value: Any, key_path: str, walk: Walk) -> Any:
        return walk.read_routes(value, key_path)


# -- declarations and the walker ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared key of a table."""

    key: str
    type: ValueType
    doc: str
    required: bool = False
    default: Any = None
    check: Check | None = None
    missing: str | None = None

    def missing_message(self) -> str:
        return self.missing or f"missing: {self.doc}"


_REQUIRED: Final = object()


def setting(
    type: ValueType,
    doc: str,
    *,
    default: Any = _REQUIRED,
    check: Check | None = None,
    missing: str | None = None,
) -> Any:
    """A dataclass field declaring one TOML key (required unless ``default`` is given)."""
    info = {"type": type, "doc": doc, "check": check, "missing": missing}
    if default is _REQUIRED:
        return dataclasses.field(metadata={_SETTING: info})
    return dataclasses.field(default=default, metadata={_SETTING: info})


def schema_of(declaration: type) -> tuple[Setting, ...]:
    """The settings a dataclass declares, in field order."""
    out = []
    for f in dataclasses.fields(declaration):
        info = f.metadata.get(_SETTING)
        if info is None:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required or f.default is dataclasses.MISSING else f.default
        out.append(Setting(f.name, required=required, default=default, **info))
    return tuple(out)


def read_table(
    settings: Sequence[Setting],
    table: dict[str, Any],
    key_path: str,
    walk: Walk,
    extra: Collection[str] = (),
    expected: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Check ``table`` against ``settings``: (every key's value or INVALID, all fine?).

    Shape first (unknown keys, missing keys, each value's type), then each
    present value's check, so a value's meaning is judged only once it has the
    right shape.  ``extra`` keys are allowed but left to the caller.
    """
    known = [s.key for s in settings]
    ok = True
    for key in table:
        if key not in known and key not in extra:
            hint = expected or f"expected one of: {', '.join(known)}"
            walk.problem(join_key(key_path, key), f"unknown key; {hint}")
            ok = False
    values: dict[str, Any] = {}
    for s in settings:
        path = join_key(key_path, s.key)
        if s.key in table:
            values[s.key] = s.type.read(table[s.key], path, walk)
        elif s.required:
            walk.problem(path, s.missing_message())
            values[s.key] = INVALID
        else:
            values[s.key] = s.default
    for s in settings:
        if s.check is not None and s.key in table and values[s.key] is not INVALID:
            values[s.key] = s.check(values[s.key], join_key(key_path, s.key), walk)
    return values, ok and not any(v is INVALID for v in values.values())


def read_declared(declaration: type, table: dict[str, Any], key_path: str, walk: Walk) -> Any:
    """An instance of ``declaration`` from ``table``, or INVALID; a ``validate`` hook runs last.

    ``declaration.validate(self, key_path, walk)`` (optional) checks keys together
    and returns the table's value (often ``self``) or INVALID.
    """
    values, ok = read_table(schema_of(declaration), table, key_path, walk)
    if not ok:
        return INVALID
    made = declaration(**values)
    validate = getattr(made, "validate", None)
    return made if validate is None else validate(key_path, walk)
