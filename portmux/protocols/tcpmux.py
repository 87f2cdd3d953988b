# -*- test-case-name: tests.client.test_connect,tests.protocols.test_matrix,tests.protocols.test_tcpmux,tests.protocols.test_tcpmux_naming -*-
"""TCPMUX (RFC 1078) with Moniker-style names: every rule of the protocol lives here.

The probe (a service-name line, ``HELP`` included), the name grammar
``[namespace:]name[/version]`` and its version ranking, the positive answer ``+``
and the refusal ``-reason``. A plain TCPMUX name (``orders``) is a valid name in the
default namespace with no version, so every RFC 1078 client keeps working. See
docs/naming.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = [
    "MAX_LENGTH",
    "MAX_NAME",
    "NAME_CHARACTERS",
    "PROBE",
    "MalformedName",
    "ServiceName",
    "accept_bytes",
    "parse",
    "pick_newest",
    "probe_tcpmux",
    "refuse",
    "resolution_failure",
]

MAX_LENGTH = 64
"""Longest service name accepted, namespace and version included (the probe's limit)."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*\Z")
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._+@-]*\Z")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*\Z")

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

    def accepts(self, requested: ServiceName) -> bool:
        """True when a client asking for ``requested`` may reach a route named ``self``.

        A request without a version accepts any version of the same name (the
        router then prefers the newest); a versioned request needs that version.
        """
        if requested.key != self.key:
            return False
        return not requested.version or requested.version == self.version


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


def pick_newest(candidates: Iterable[tuple[ServiceName, T]]) -> T | None:
    """The item with the highest version; the first one listed wins a tie."""
    best: tuple[tuple[int, ...], T] | None = None
    for name, item in candidates:
        if best is None or name.version > best[0]:
            best = (name.version, item)
    return None if best is None else best[1]


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

