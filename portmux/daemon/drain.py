# -*- test-case-name: tests.daemon.test_lifecycle -*-
"""Graceful stop: wait for a multiplexer's open connections to finish, up to a grace period.

Listening has already stopped when this runs; connections still open when the grace
period ends (or when ``now()`` is called, on a second SIGTERM) are closed, and each
says ``drain_timeout`` in the access log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="portmux")

__all__ = ["Drain"]

POLL_INTERVAL = 0.05


class Drain:
    """Fires ``done`` once ``mux.connections`` is empty or the grace period is over."""

    def __init__(self, reactor: Any, mux: Any, grace_period: float) -> None:
        self.reactor = reactor
        self.mux = mux
        self.grace_period = grace_period
        self.done: Deferred[int] = Deferred()
        """Fires with the number of connections that had to be closed."""
        self._deadline = reactor.seconds() + grace_period
        self._poll = LoopingCall(self._check)
        self._poll.clock = reactor

    def start(self) -> Deferred[int]:
        count = len(self.mux.connections)
        if count:
            log.info("draining: {count} open connection(s), grace period {grace:g} s",
                     count=count, grace=self.grace_period)
        self._poll.start(POLL_INTERVAL, now=True)
        return self.done

    def _check(self) -> None:
        if not self.mux.connections:
            self._finish(0)
        elif self.reactor.seconds() >= self._deadline:
            log.info("grace period over")
            self.now()

    def now(self) -> None:
        """Close every connection still open, at once."""
        if self.done.called:
            return
        open_now = list(self.mux.connections)
        for sniffer in open_now:
            sniffer.end_reason = "drain_timeout"
            transport = sniffer.transport
            if transport is not None:
                transport.abortConnection()
        if open_now:
            log.info("closed {count} connection(s) still open", count=len(open_now))
        self._finish(len(open_now))

    def _finish(self, closed: int) -> None:
        if self._poll.running:
            self._poll.stop()
        if not self.done.called:
            if not closed:
                log.info("drained: every connection finished")
            self.done.callback(closed)
