# -*- test-case-name: tests.daemon.test_daemon -*-
"""Sockets inherited from systemd (socket activation), with or without LISTEN_FDNAMES.

Twisted's own ``systemd:`` parser sees no socket at all when LISTEN_FDNAMES is
absent (older systemd, ``systemd-socket-activate`` without ``--fdname``), and it
consumes the variables when ``twisted.internet.endpoints`` is first imported. So
portmux reads them itself, falling back to the process's initial environment in
``/proc/self/environ`` when they have already been taken out of ``os.environ``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import AdoptedStreamServerEndpoint

FIRST_DESCRIPTOR = 3
"""sd_listen_fds(3): inherited sockets start at descriptor 3."""


@dataclass(frozen=True)
class InheritedSockets:
    """The descriptors systemd passed to this process, and their names when given."""

    descriptors: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def by_index(self, index: int) -> int:
        """The descriptor at ``index``; KeyError naming what was inherited if none."""
        if not 0 <= index < len(self.descriptors):
            raise KeyError(f"no inherited socket at index {index} ({self.describe()})")
        return self.descriptors[index]

    def by_name(self, name: str) -> int:
        """The descriptor named ``name`` (FileDescriptorName=); KeyError if none."""
        for fd, fd_name in zip(self.descriptors, self.names):
            if fd_name == name:
                return fd
        raise KeyError(f"no inherited socket named {name!r} ({self.describe()})")

    def describe(self) -> str:
        """What was inherited, in words, for error messages."""
        if not self.descriptors:
            return "systemd passed no sockets: LISTEN_FDS/LISTEN_PID unset or for another process"
        named = f", names {','.join(self.names)}" if self.names else ", LISTEN_FDNAMES unset"
        return f"{len(self.descriptors)} socket(s) inherited{named}"


def _initial_environment() -> Mapping[str, str]:
    """This process's environment as it was at exec (Linux), or {} where unknown."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
            for key, _, value in pairs}


def inherited_sockets(environ: Mapping[str, str] | None = None, pid: int | None = None
                      ) -> InheritedSockets:
    """Read LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (sd_listen_fds(3) rules)."""
    pid = os.getpid() if pid is None else pid
    if environ is None:
        environ = os.environ if "LISTEN_FDS" in os.environ else _initial_environment()
    if environ.get("LISTEN_PID") != str(pid):
        return InheritedSockets()
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return InheritedSockets()
    descriptors = tuple(range(FIRST_DESCRIPTOR, FIRST_DESCRIPTOR + max(count, 0)))
    names_text = environ.get("LISTEN_FDNAMES")
    names = tuple(names_text.split(":")) if names_text else ()
    if names and len(names) != len(descriptors):
        names = ()
    return InheritedSockets(descriptors, names)


def systemd_endpoint(reactor: Any, description: str,
                     sockets: InheritedSockets) -> AdoptedStreamServerEndpoint:
    """An endpoint adopting the socket ``systemd:domain=INET:index=N|name=NAME`` names."""
    fields = dict(part.partition("=")[::2] for part in description.split(":")[1:])
    unknown = set(fields) - {"domain", "index", "name"}
    if unknown:
        raise ValueError(f"unknown systemd endpoint option(s): {', '.join(sorted(unknown))}")
    if ("index" in fields) == ("name" in fields):
        raise ValueError("a systemd endpoint needs exactly one of index= or name=")
    family = getattr(socket, "AF_" + fields.get("domain", "INET"), None)
    if not isinstance(family, int):
        raise ValueError(f"unknown address family domain={fields.get('domain')!r}")  # noqa: TRY004
    if "index" in fields:
        if not fields["index"].isdigit():
            raise ValueError(f"index={fields['index']!r} is not a number")
        fileno = sockets.by_index(int(fields["index"]))
    else:
        fileno = sockets.by_name(fields["name"])
    return AdoptedStreamServerEndpoint(reactor, fileno, family)
