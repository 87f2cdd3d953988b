"""The rate-limited logger: a burst per kind per interval, then one "suppressed N" line."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from portmux.core.ratelog import RateLimitedLog


def make(**options: Any) -> tuple[Clock, RateLimitedLog, list[str]]:
    lines: list[str] = []
    clock = Clock()
    log = RateLimitedLog(clock, Logger(observer=lambda e: lines.append(formatEvent(e))), **options)
    return clock, log, lines


def test_burst_then_summary_when_the_interval_ends() -> None:
    clock, log, lines = make(burst=3, interval=10.0)
    for i in range(100):
        log.emit("refused", "refused {n}", n=i)
    assert lines == ["refused 0", "refused 1", "refused 2"]
    clock.advance(10.0)
    assert lines[3:] == ["suppressed 97 similar refused lines in the last 10 s"]
    assert clock.getDelayedCalls() == []
    log.emit("refused", "refused {n}", n=100)
    assert lines[-1] == "refused 100"
    assert log.suppressed_total == 97


def test_kinds_are_limited_separately_and_flush_writes_pending_summaries() -> None:
    clock, log, lines = make(burst=1, interval=5.0)
    for _ in range(3):
        log.emit("a", "a")
        log.emit("b", "b")
    assert lines == ["a", "b"]
    log.flush()
    assert sorted(lines[2:]) == [
        "suppressed 2 similar a lines in the last 5 s",
        "suppressed 2 similar b lines in the last 5 s",
    ]
    assert clock.getDelayedCalls() == []


def test_quiet_kind_writes_no_summary() -> None:
    clock, log, lines = make(burst=5)
    log.emit("x", "one")
    clock.advance(60)
    assert lines == ["one"]


def test_admit_counts_a_suppressed_line_without_building_it() -> None:
    clock, log, lines = make(burst=2, interval=10.0)
    built = []
    for i in range(5):
        if log.admit("refused"):
            built.append(i)
            log.write("refused {n}", n=i)
    assert built == [0, 1] and lines == ["refused 0", "refused 1"]
    assert log.suppressed_total == 3
    clock.advance(10.0)
    assert lines[2:] == ["suppressed 3 similar refused lines in the last 10 s"]
