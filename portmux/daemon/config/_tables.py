# -*- test-case-name: tests.daemon.test_config -*-
"""The file's own tables, each declared once: listen, sniff, control, reservation, and the top level.

Routes (``[[route]]``) are read by portmux.daemon.config._document, since a route's
keys depend on the registered target kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portmux.control._server import MAX_REGISTRATIONS, UNAUTHORIZED_RATE, UNAUTHORIZED_TOTAL_RATE
from portmux.core.limits import Limits, Timeouts
from portmux.core.mux import SniffSettings
from portmux.core.routing import Match, Network
from portmux.daemon.config._checks import NETWORKS, GroupId, UserId, positive, server_endpoint
from portmux.daemon.config._limits import LimitsTable, TimeoutsTable, non_negative
from portmux.daemon.config._match import MISSING_MATCH, MatchTable
from portmux.daemon.config._registry import RegistryConfig
from portmux.daemon.config._schema import (
    Flag,
    ListOf,
    Number,
    OneOf,
    Routes,
    TableOf,
    Text,
    Walk,
    Whole,
    setting,
)

__all__ = ["AccessLogConfig", "ConfigFile", "ControlConfig", "Listener", "ReservationTable", "ShutdownTable", "SniffTable"]

DEFAULT_MAX_PENDING = 64
DEFAULT_BACKLOG = 511
_SERVER_ENDPOINT = Text("a server endpoint string")


@dataclass(frozen=True)
class Listener:
    """One ``[[listen]]`` table: a server endpoint string and PROXY-header trust."""

    endpoint: str = setting(
        _SERVER_ENDPOINT,
        "any Twisted server endpoint string, checked by parsing it (nothing is bound)",
        check=server_endpoint,
        missing='missing: a Twisted server endpoint string, e.g. "tcp:8080"',
    )
    proxy_protocol: bool = setting(Flag(), "read a PROXY v1/v2 header before sniffing", default=False)
    trusted: tuple[Network, ...] = setting(NETWORKS, "peers allowed to send a PROXY header", default=())
    max_connections: int = setting(
        Whole(non_negative), "this listener's own cap on open connections (0: only the global one)", default=0
    )
    backlog: int = setting(
        Whole(positive), "the listen(2) backlog for tcp:, ssl: and unix: endpoints", default=DEFAULT_BACKLOG
    )

    def validate(self, key_path: str, walk: Walk) -> Listener:
        """Warn about PROXY-header settings that do nothing or trust everyone."""
        if self.trusted and not self.proxy_protocol:
            walk.warn(f"{key_path}.trusted", "has no effect without proxy_protocol = true")
        elif self.proxy_protocol and not self.trusted:
            walk.warn(f"{key_path}.proxy_protocol", "no trusted networks: PROXY headers are accepted from any peer")
        return self


_SNIFF = SniffSettings()


@dataclass(frozen=True)
class SniffTable:
    """``[sniff]``: bounds on classifying a connection; read as a core SniffSettings."""

    preamble_timeout: float = setting(
        Number(), "seconds allowed to classify a connection", default=_SNIFF.preamble_timeout, check=positive
    )
    preamble_max_bytes: int = setting(
        Whole(), "bytes buffered while classifying", default=_SNIFF.preamble_max_bytes, check=positive
    )
    silence_timeout: float = setting(
        Number(), "seconds of silence before the silent route", default=_SNIFF.silence_timeout, check=positive
    )
    trace: tuple[Network, ...] = setting(
        NETWORKS, "client networks whose routing decisions are logged at debug level", default=()
    )

    def validate(self, key_path: str, walk: Walk) -> SniffSettings:
        settings = SniffSettings(
            float(self.preamble_timeout), self.preamble_max_bytes, float(self.silence_timeout),
            tuple(self.trace),
        )
        if settings.silence_timeout > settings.preamble_timeout:
            walk.warn(
                "sniff.silence_timeout",
                "is longer than preamble_timeout; the silent route is chosen at most at preamble_timeout",
            )
        return settings


@dataclass(frozen=True)
class ControlConfig:
    """The ``[control]`` table: where workers register, and who may."""

    endpoint: str = setting(
        _SERVER_ENDPOINT,
        "the control socket's server endpoint",
        check=server_endpoint,
        missing='missing: a server endpoint string, e.g. "unix:/run/portmux.sock"',
    )
    allow_uids: tuple[int, ...] = setting(
        ListOf("an array of user ids or names", item=UserId), "users allowed to connect", default=()
    )
    allow_gids: tuple[int, ...] = setting(
        ListOf("an array of group ids or names", item=GroupId), "groups allowed to connect", default=()
    )
    max_pending: int = setting(
        Whole(), "bound on queued, unanswered control requests", default=DEFAULT_MAX_PENDING, check=positive
    )
    max_registrations: int = setting(
        Whole(), "registrations one control connection may hold", default=MAX_REGISTRATIONS, check=positive
    )
    unauthorized_rate: float = setting(
        Number(), "refused (unauthorized) connects answered per second per uid; more are dropped",
        default=UNAUTHORIZED_RATE, check=positive,
    )
    unauthorized_total_rate: float = setting(
        Number(), "refused connects answered per second over all uids", default=UNAUTHORIZED_TOTAL_RATE,
        check=positive,
    )


@dataclass(frozen=True)
class ReservationTable:
    """A ``[[reservation]]`` table; loading turns it into portmux.control's ``Reservation``."""

    match: Match = setting(MatchTable(), "the reserved part of the namespace", missing=MISSING_MATCH)
    uids: tuple[int, ...] = setting(
        ListOf("an array of user ids or names", item=UserId),
        "who may register there",
        missing="missing: the user ids allowed to register these routes",
    )


@dataclass(frozen=True)
class AccessLogConfig:
    """``[access_log]``: one line per finished connection."""

    path: str = setting(Text("a file path or \"-\""), 'the log file ("-" for standard output)', default="-")
    format: str = setting(OneOf("text", "json"), "text (tcplog-like) or json (JSON lines)", default="text")


@dataclass(frozen=True)
class ShutdownTable:
    """``[shutdown]``: how SIGTERM drains."""

    grace_period: float = setting(
        Number(), "seconds open connections may finish after SIGTERM", default=30.0, check=positive
    )


def _tables(name: str, declaration: type, **options: Any) -> ListOf:
    return ListOf(f"an array of tables ([[{name}]])", item=TableOf(declaration=declaration), **options)


_NO_LISTENER = "add at least one [[listen]] table with an endpoint"


@dataclass(frozen=True)
class ConfigFile:
    """The top level of a config file."""

    listen: tuple[Listener, ...] = setting(
        _tables("listen", Listener, empty=f"empty: {_NO_LISTENER}"),
        "where to accept connections",
        missing=f"missing: {_NO_LISTENER}",
    )
    sniff: SniffSettings = setting(
        TableOf("a table ([sniff])", declaration=SniffTable), "bounds on classifying", default=_SNIFF
    )
    route: tuple[Any, ...] = setting(Routes(), "the ordered routes", default=())
    control: ControlConfig | None = setting(
        TableOf("a table ([control])", declaration=ControlConfig), "the control socket", default=None
    )
    reservation: tuple[ReservationTable, ...] = setting(
        _tables("reservation", ReservationTable), "who may register which routes", default=()
    )
    processes: int = setting(
        Whole(), "processes serving the listeners (this one plus processes - 1 children)",
        default=1, check=positive,
    )
    access_log: AccessLogConfig | None = setting(
        TableOf("a table ([access_log])", declaration=AccessLogConfig), "the access log", default=None
    )
    shutdown: ShutdownTable = setting(
        TableOf("a table ([shutdown])", declaration=ShutdownTable), "draining on SIGTERM",
        default=ShutdownTable(),
    )
    registry: RegistryConfig | None = setting(
        TableOf("a table ([registry])", declaration=RegistryConfig), "routes shared through etcd", default=None
    )
    limits: Limits | None = setting(
        TableOf("a table ([limits])", declaration=LimitsTable), "connection limits", default=None
    )
    timeouts: Timeouts = setting(
        TableOf("a table ([timeouts])", declaration=TimeoutsTable), "timeouts after classification",
        default=Timeouts(),
    )
