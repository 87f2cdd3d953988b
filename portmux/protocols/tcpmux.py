# -*- test-case-name: tests.client.test_connect,tests.protocols.test_matrix,tests.protocols.test_tcpmux,tests.protocols.test_tcpmux_naming -*-
"""TCPMUX (RFC 1078) with Moniker-style names: every rule of the protocol lives here.

The probe (a service-name line, ``HELP`` included), the name grammar
``[namespace:]name[/version]`` (and the ``namespace:*`` pattern), its version ranking
and the service index routers use, the positive answer ``+`` and the refusal ``-reason``. A plain TCPMUX name (``orders``) is a valid name in the
default namespace with no version, so every RFC 1078 client keeps working. See
docs/naming.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = [
    "MAX_LENGTH",
    "MAX_NAME",
    "NAME_CHARACTERS",
    "PROBE",
    "MalformedName",
    "ServiceIndex",
    "ServiceName",
    "accept_bytes",
    "parse",
    "parse_pattern",
    "pick_newest",
    "probe_tcpmux",
    "rank_newest",
    "refuse",
    "resolution_failure",
]

MAX_LENGTH = 64
"""Longest service name accepted, namespace and version included (the probe's limit)."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*\Z")
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._+@-]*\Z")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*\Z")
WILDCARD = "*"
"""The name of a ``namespace:*`` pattern: every name in that namespace."""

T = TypeVar("T")


class MalformedName(ValueError):
    """A service name that does not follow ``[namespace:]name[/version]``."""


@dataclass(frozen=True, slots=True)
class ServiceName:
    """A parsed service name; ``version`` is () when none was given."""

    namespace: str
    name: str
    version: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """The (namespace, name) pair that versions are grouped under."""
        return (self.namespace, self.name)

    @property
    def base(self) -> str:
        """The name without its version: ``alice:orders`` or ``orders``."""
        return f"{self.namespace}:{self.name}" if self.namespace else self.name

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)

    def __str__(self) -> str:
        return f"{self.base}/{self.version_text}" if self.version else self.base

    @property
    def is_pattern(self) -> bool:
        """True for ``namespace:*``, which stands for every name in the namespace."""
        return self.name == WILDCARD

    def accepts(self, requested: ServiceName) -> bool:
        """True when a client asking for ``requested`` may reach a route named ``self``.

        A request without a version accepts any version of the same name (the
        router then prefers the newest); a versioned request needs that version.
        A ``namespace:*`` route accepts every request in its namespace.
        """
        if self.is_pattern:
            return requested.namespace == self.namespace
        if requested.key != self.key:
            return False
        return not requested.version or requested.version == self.version

    def covers(self, other: ServiceName) -> bool:
        """True when ``other`` (any version) lies in the space ``self`` reserves."""
        if self.is_pattern:
            return other.namespace == self.namespace
        return other.key == self.key


def _normalize_version(text: str) -> tuple[int, ...]:
    parts = [int(part) for part in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def parse(text: str) -> ServiceName:
    """Parse ``[namespace:]name[/version]`` case-insensitively; raise MalformedName why not."""
    lowered = text.strip().lower()
    if not lowered:
        raise MalformedName("the name is empty")
    if len(lowered) > MAX_LENGTH:
        raise MalformedName(f"the name is longer than {MAX_LENGTH} characters")
    rest, slash, version_text = lowered.partition("/")
    if slash:
        if not version_text:
            raise MalformedName("the version after '/' is empty")
        if not _VERSION.match(version_text):
            raise MalformedName(
                f"version {version_text!r} is not numbers separated by dots (e.g. 2 or 1.4)"
            )
    namespace, colon, name = rest.rpartition(":")
    if colon:
        if not namespace:
            raise MalformedName("the namespace before ':' is empty")
        if ":" in namespace:
            raise MalformedName("more than one ':' (use namespace:name)")
        if not _NAMESPACE.match(namespace):
            raise MalformedName(f"namespace {namespace!r} has characters outside a-z 0-9 . _ + - @")
    if not name:
        raise MalformedName("the service name is empty")
    if not _NAME.match(name):
        raise MalformedName(
            f"name {name!r} must start with a letter or digit and use only a-z 0-9 . _ + -"
        )
    version = _normalize_version(version_text) if slash else ()
    return ServiceName(namespace, name, version)


def parse_pattern(text: str) -> ServiceName:
    """Parse a route's name: a service name, or ``namespace:*`` for a whole namespace."""
    namespace, colon, name = text.strip().lower().partition(":")
    if colon and name == WILDCARD:
        parse(f"{namespace}:x")  # the namespace must be valid
        return ServiceName(namespace, WILDCARD)
    return parse(text)


def rank_newest(candidates: Iterable[tuple[ServiceName, T]]) -> list[T]:
    """The items, highest version first; equal versions keep the order they were listed in."""
    ranked = sorted(candidates, key=lambda entry: entry[0].version, reverse=True)
    return [item for _, item in ranked]


def pick_newest(candidates: Iterable[tuple[ServiceName, T]]) -> T | None:
    """The item with the highest version; the first one listed wins a tie."""
    ranked = rank_newest(candidates)
    return ranked[0] if ranked else None


def is_versioned(requested: str) -> bool:
    """True when a requested name asks for one version (``orders/2``)."""
    return "/" in requested


def base_of(requested: str) -> str:
    """The requested name without its version, lower-cased, without a full parse."""
    return requested.partition("/")[0].lower()


class ServiceIndex(Generic[T]):
    """Immutable lookup of items (routes) by the service name they serve, in route order.

    Items without a name, or with a ``namespace:*`` pattern, are candidates for
    every request. An unversioned request prefers its name's newest version.
    """

    def __init__(self, entries: Iterable[tuple[str | None, T]]) -> None:
        general: list[tuple[int, T]] = []
        groups: dict[str, list[tuple[int, ServiceName, T]]] = {}
        for position, (text, item) in enumerate(entries):
            name = parse_pattern(text) if text else None
            if name is None or name.is_pattern:
                general.append((position, item))
            else:
                groups.setdefault(name.base, []).append((position, name, item))
        self.names: tuple[ServiceName, ...] = tuple(
            name for members in groups.values() for _, name, _ in members
        )
        self._general = tuple(item for _, item in general)
        self._candidates = {
            base: tuple(item for _, item in sorted(
                [(p, item) for p, _, item in members] + general, key=lambda e: e[0]))
            for base, members in groups.items()
        }
        self._newest: dict[int, tuple[T, ...]] = {}
        self._versions: dict[str, tuple[tuple[tuple[int, ...], T], ...]] = {}
        for base, members in groups.items():
            versions = sorted(((name.version, item) for _, name, item in members),
                              key=lambda entry: entry[0], reverse=True)
            self._versions[base] = tuple(versions)
            ranked = tuple(item for _, item in versions)
            for _, _, item in members:
                self._newest[id(item)] = ranked

    def candidates(self, requested: str | None) -> tuple[T, ...]:
        """The items that may serve ``requested``, in route order."""
        if requested is None:
            return self._general
        return self._candidates.get(base_of(requested), self._general)

    def newest(self, base: str) -> tuple[tuple[tuple[int, ...], T], ...]:
        """(version, item) for the items serving name ``base``, newest first (route order on ties)."""
        return self._versions.get(base, ())

    def ranked(self, requested: str, item: T) -> tuple[T, ...]:
        """What to try in place of ``item``: its name's versions newest first when
        ``requested`` has no version, else ``item`` alone."""
        if is_versioned(requested):
            return (item,)
        return self._newest.get(id(item), (item,))


def resolution_failure(requested: str, registered: Iterable[ServiceName]) -> str:
    """A one-line reason why ``requested`` found no route, given the registered names."""
    try:
        wanted = parse(requested)
    except MalformedName as error:
        return f"malformed service name {requested!r}: {error}"
    versions = sorted({name.version for name in registered if name.key == wanted.key})
    if wanted.version and versions:
        have = ", ".join(".".join(map(str, v)) if v else "unversioned" for v in versions)
        return f"service {wanted.base!r} has no version {wanted.version_text} (registered: {have})"
    return f"unknown service {str(wanted)!r}"


# -- probe ------------------------------------------------------------

MAX_NAME = 64
NAME_CHARACTERS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+/:@"
)
"""Bytes allowed in a service name; anything else (a space, binary) is NO."""


def probe_tcpmux(data: bytes) -> ProbeResult:
    """Match "NAME\\r\\n" (or "NAME\\n"); ``consumed`` covers the line ending."""
    for index, byte in enumerate(data):
        if byte in NAME_CHARACTERS:
            if index >= MAX_NAME:
                return NO
            continue
        if index == 0:
            return NO
        if byte == 0x0A:
            end = index + 1
        elif byte == 0x0D:
            following = data[index + 1 : index + 2]
            if not following:
                return NEED_MORE
            if following != b"\n":
                return NO
            end = index + 2
        else:
            return NO
        service = data[:index].decode("ascii").lower()
        return Preamble(protocol="tcpmux", service=service, consumed=end)
    return NEED_MORE


PROBE = FunctionProbe("tcpmux", probe_tcpmux)


# -- answers -----------------------------------------------------------------


def accept_bytes(text: str = "") -> bytes:
    """RFC 1078's positive answer: ``+``, an optional text, CRLF."""
    return b"+" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """RFC 1078's negative answer: ``-`` then a reason, CRLF."""
    text = reason.replace("\r", " ").replace("\n", " ")
    return f"-{text}\r\n".encode("utf-8", "replace")

