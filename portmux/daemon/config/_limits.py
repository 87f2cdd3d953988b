# -*- test-case-name: tests.daemon.test_config_limits -*-
"""``[limits]`` and ``[timeouts]``: admission limits and timeouts after classification.

Both are read into the core's ``Limits`` / ``Timeouts`` values the Multiplexer
holds; a proxy route may override timeouts with its own ``timeouts = { ... }``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from portmux.core.limits import Limits, Timeouts, automatic_max_connections
from portmux.daemon.config._problems import describe
from portmux.daemon.config._schema import INVALID, Number, Walk, Whole, setting

__all__ = ["LimitsTable", "ProxyTimeoutsTable", "TimeoutsTable", "non_negative", "positive_seconds"]

_LIMITS = Limits()
_TIMEOUTS = Timeouts()


def non_negative(value: float, key_path: str, walk: Walk) -> Any:
    """A number of at least 0 (0 turns the setting off)."""
    if value < 0:
        walk.problem(key_path, f"must be 0 (off) or more, got {describe(value)}")
        return INVALID
    return value


def positive_seconds(value: float, key_path: str, walk: Walk) -> Any:
    """A number of seconds greater than 0."""
    if value <= 0:
        walk.problem(key_path, f"must be greater than 0, got {describe(value)}")
        return INVALID
    return value


def _prefix(bits: int) -> Any:
    def check(value: int, key_path: str, walk: Walk) -> Any:
        if not 0 <= value <= bits:
            walk.problem(key_path, f"must be a prefix length from 0 to {bits}, got {describe(value)}")
            return INVALID
        return value

    return check


@dataclass(frozen=True)
class LimitsTable:
    """``[limits]``: how many connections portmux holds, in all and per source network."""

    max_connections: int = setting(
        Whole(non_negative),
        "open connections in all; at the mark listeners stop accepting until one ends"
        " (0: automatic, half the fd limit less a reserve)",
        default=0,
    )
    max_per_source: int = setting(
        Whole(non_negative), "open connections per source network (0: no limit)", default=0
    )
    new_per_source_rate: float = setting(
        Number(check=non_negative), "new connections per second per source network (0: no limit)", default=0
    )
    new_per_source_burst: int = setting(
        Whole(non_negative), "new connections a source may open at once (0: twice the rate)", default=0
    )
    source_prefix_v4: int = setting(
        Whole(_prefix(32)), "IPv4 prefix length that makes one source network", default=_LIMITS.source_prefix_v4
    )
    source_prefix_v6: int = setting(
        Whole(_prefix(128)), "IPv6 prefix length that makes one source network", default=_LIMITS.source_prefix_v6
    )
    max_sniffing: int = setting(
        Whole(non_negative),
        "connections still being classified per listener; a new one past it closes the oldest"
        " (0: half the listener's connection cap)",
        default=_LIMITS.max_sniffing,
    )
    evict_sniffing_after: float = setting(
        Number(check=non_negative),
        "at a max_connections mark, an unclassified connection this old is closed rather than"
        " pausing (0: no eviction at all, max_sniffing included)",
        default=_LIMITS.evict_sniffing_after,
    )

    def validate(self, key_path: str, walk: Walk) -> Limits:
        return Limits(
            max_connections=self.max_connections or automatic_max_connections(),
            max_per_source=self.max_per_source,
            new_per_source_rate=float(self.new_per_source_rate),
            new_per_source_burst=self.new_per_source_burst,
            source_prefix_v4=self.source_prefix_v4,
            source_prefix_v6=self.source_prefix_v6,
            max_sniffing=self.max_sniffing,
            evict_sniffing_after=float(self.evict_sniffing_after),
        )


def default_limits() -> Limits:
    """``[limits]`` when the file has none (the automatic global cap)."""
    return dataclasses.replace(Limits(), max_connections=automatic_max_connections())


@dataclass(frozen=True)
class TimeoutsTable:
    """``[timeouts]``: every timeout after classification, in seconds (0: off)."""

    connect: float = setting(
        Number(check=positive_seconds), "seconds to connect to a proxy backend (per attempt)",
        default=_TIMEOUTS.connect,
    )
    client_idle: float = setting(
        Number(check=non_negative),
        "client inactivity: the HTTP keep-alive idle limit, and a proxy pair's when tunnel = 0",
        default=_TIMEOUTS.client_idle,
    )
    server_idle: float = setting(
        Number(check=non_negative), "backend inactivity of a proxy pair when tunnel = 0", default=_TIMEOUTS.server_idle
    )
    tunnel: float = setting(
        Number(check=non_negative), "a connected proxy pair quiet both ways this long is closed", default=_TIMEOUTS.tunnel
    )
    server_response: float = setting(
        Number(check=non_negative), "a proxied HTTP backend's first byte (else 504)", default=_TIMEOUTS.server_response
    )
    client_fin: float = setting(
        Number(check=non_negative), "the client's inactivity once the backend closed its side",
        default=_TIMEOUTS.client_fin,
    )
    server_fin: float = setting(
        Number(check=non_negative), "the backend's inactivity once the client closed its side",
        default=_TIMEOUTS.server_fin,
    )

    def validate(self, key_path: str, walk: Walk) -> Timeouts:
        return Timeouts(**{f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class ProxyTimeoutsTable:
    """A proxy route's ``timeouts = { ... }``: only the keys given override ``[timeouts]``."""

    connect: float | None = setting(Number(check=positive_seconds), "see [timeouts]", default=None)
    client_idle: float | None = setting(Number(check=non_negative), "see [timeouts]", default=None)
    server_idle: float | None = setting(Number(check=non_negative), "see [timeouts]", default=None)
    tunnel: float | None = setting(Number(check=non_negative), "see [timeouts]", default=None)
    server_response: float | None = setting(Number(check=non_negative), "see [timeouts]", default=None)
    client_fin: float | None = setting(Number(check=non_negative), "see [timeouts]", default=None)
    server_fin: float | None = setting(Number(check=non_negative), "see [timeouts]", default=None)

    def validate(self, key_path: str, walk: Walk) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}
