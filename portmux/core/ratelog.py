# -*- test-case-name: tests.core.test_ratelog -*-
"""Log lines that an attacker can trigger, rate-limited per kind with a "suppressed N" summary.

Refusals, limits and timeouts are one log line each, but a flood of them would
be a log flood.  ``RateLimitedLog`` lets ``burst`` lines of one kind through per
``interval`` seconds; the rest are counted, and the next line of that kind that
gets through (or a timer at the end of the interval) says how many were dropped.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

DEFAULT_BURST = 20
DEFAULT_INTERVAL = 10.0


class _Window:
    """One kind's current interval: when it started, lines let through, lines dropped."""

    __slots__ = ("dropped", "passed", "started", "timer")

    def __init__(self, started: float) -> None:
        self.started = started
        self.passed = 0
        self.dropped = 0
        self.timer: Any = None


class RateLimitedLog:
    """At most ``burst`` lines per ``kind`` per ``interval`` seconds go to ``logger``."""

    def __init__(
        self,
        reactor: Any,
        logger: Logger,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0
        """Lines dropped since start (for the status page and tests)."""

    def emit(self, kind: str, format: str, **fields: Any) -> None:
        """Log ``format`` at info level unless ``kind`` already used its burst this interval."""
        if self.admit(kind):
            self.logger.info(format, **fields)

    def emit_warning(self, kind: str, format: str, **fields: Any) -> None:
        """Like ``emit``, at warning level."""
        if self.admit(kind):
            self.logger.warn(format, **fields)  # noqa: G010  # twisted.logger.Logger has no .warning

    def admit(self, kind: str) -> bool:
        """True: a line of ``kind`` may be logged now; False: it was counted as suppressed.

        Hot paths ask first and build the line's fields only when it is admitted, so a
        suppressed line costs a dict lookup and a comparison.
        """
        now = self.reactor.seconds()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self.interval:
            if window is not None:
                self._summarize(kind, window)
            window = self._windows[kind] = _Window(now)
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.dropped += 1
        self.suppressed_total += 1
        if window.timer is None:
            delay = max(0.0, window.started + self.interval - now)
            window.timer = self.reactor.callLater(delay, self._close_window, kind, window)
        return False

    def write(self, format: str, **fields: Any) -> None:
        """Log an admitted line (see ``admit``) at info level."""
        self.logger.info(format, **fields)

    def _close_window(self, kind: str, window: _Window) -> None:
        window.timer = None
        if self._windows.get(kind) is window:
            del self._windows[kind]
        self._summarize(kind, window)

    def _summarize(self, kind: str, window: _Window) -> None:
        timer, window.timer = window.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if window.dropped:
            dropped, window.dropped = window.dropped, 0
            self.logger.info(
                "suppressed {count} similar {kind} lines in the last {seconds:g} s",
                count=dropped,
                kind=kind,
                seconds=self.interval,
            )

    def flush(self) -> None:
        """Write every pending summary now and stop the timers (on shutdown)."""
        windows, self._windows = self._windows, {}
        for kind, window in windows.items():
            self._summarize(kind, window)
