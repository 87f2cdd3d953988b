# -*- test-case-name: tests.targets.test_http_pipelining -*-
"""An HTTP/1.x channel that stops reading from a client whose answers pile up.

twisted.web's HTTPChannel answers pipelined requests one at a time, but it parses
every request already read in one go, so a client that pipelines thousands of
requests in a few reads and never reads the answers makes portmux buffer all of
them.  ``BoundedChannel`` stops parsing (LineReceiver's ``paused``) and reading
when the transport says its send buffer is full, and after ``max_pipelined``
requests answered from bytes already read it yields to the reactor before the
next batch.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

MAX_PIPELINED = 16
"""Requests answered from already-read bytes before the channel yields to the reactor."""


class BoundedChannel(HTTPChannel):
    """HTTPChannel with a bound on unsent answers and on pipelined requests per batch."""

    max_pipelined = MAX_PIPELINED
    transport_full = False
    """The transport's send buffer is over its size: nothing more is parsed or read."""
    yielding = False
    """A batch of ``max_pipelined`` answers was written; the next batch waits a reactor turn."""
    answered = 0
    holds = 0
    """How often parsing was stopped (for tests and the status page)."""
    lost = False
    passed_on = False
    """The connection left this channel (its socket passed on at a later request): never read again."""
    _batch_call: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.paused and data:  # parsing is on hold: keep the bytes, stop reading more
            self._hold()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def pauseProducing(self) -> None:
        """The transport's send buffer is full: stop parsing and reading."""
        self.transport_full = True
        super().pauseProducing()  # type: ignore[no-untyped-call]
        self._hold()

    def resumeProducing(self) -> None:
        """The transport's send buffer drained: parse what is held, read again."""
        self.transport_full = False
        if self.passed_on:
            return
        super().resumeProducing()  # type: ignore[no-untyped-call]
        self._release()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)  # type: ignore[no-untyped-call]
        self.answered += 1
        if self.answered >= self.max_pipelined and not self.yielding and self.transport is not None:
            self.yielding = True
            self._hold()
            self._batch_call = self.callLater(0, self._next_batch)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        call, self._batch_call = self._batch_call, None
        if call is not None and call.active():
            call.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def _hold(self) -> None:
        if not self.paused:
            self.holds += 1
        self.paused = True  # LineReceiver's loop stops after the current request
        transport: Any = self.transport
        if transport is not None:
            transport.pauseProducing()

    def _next_batch(self) -> None:
        self._batch_call = None
        self.yielding = False
        self.answered = 0
        self._release()

    def _release(self) -> None:
        if not self.paused or self.transport_full or self.yielding or self.passed_on:
            return
        transport: Any = self.transport
        if self.lost or transport is None or transport.disconnecting:
            return
        self.paused = False
        transport.resumeProducing()
        self.dataReceived(b"")  # parse what was held
