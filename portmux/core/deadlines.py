# -*- test-case-name: tests.core.test_deadlines,tests.test_layers -*-
"""One reactor timer for many connections that share the same timeout.

Every sniffing connection needs a deadline, and almost every one is classified
long before it.  A ``callLater`` + ``cancel`` per connection costs a
DelayedCall object, two heap operations and the reactor's bookkeeping of
cancelled calls; a DeadlineQueue instead keeps its items in insertion order
(which, for one fixed delay, is deadline order) and holds a single DelayedCall
for the earliest deadline.  Adding and discarding an item are dict operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DeadlineQueue(Generic[T]):
    """Calls ``expire(item)`` for each item still queued ``delay`` seconds after it was added.

    Expiry is exact to the reactor's timer resolution: the one DelayedCall is
    always due at the earliest live deadline (or earlier, when that item was
    discarded, in which case it just re-arms itself for the next one).
    """

    __slots__ = ("_expire", "_items", "_reactor", "_timer", "delay")

    def __init__(self, reactor: Any, delay: float, expire: Callable[[T], object]) -> None:
        self._reactor = reactor
        self.delay = delay
        self._expire = expire
        self._items: dict[T, float] = {}
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def add(self, item: T) -> None:
        """Queue ``item`` to expire ``delay`` seconds from now (re-adding restarts its clock)."""
        items = self._items
        items.pop(item, None)  # keep insertion order == deadline order
        items[item] = self._reactor.seconds() + self.delay
        if self._timer is None:
            self._timer = self._reactor.callLater(self.delay, self._fire)

    def discard(self, item: T) -> None:
        """Forget ``item`` if queued; the timer stops once nothing is left."""
        items = self._items
        if items.pop(item, None) is not None and not items:
            self._stop_timer()

    def clear(self) -> None:
        """Forget every item and stop the timer (nothing expires)."""
        self._items.clear()
        self._stop_timer()

    def _stop_timer(self) -> None:
        timer = self._timer
        if timer is not None and timer is not _FIRING:  # while firing, _fire re-arms
            self._timer = None
            if timer.active():
                timer.cancel()

    def _fire(self) -> None:
        """Expire every due item (unless an earlier expiry discarded it), then re-arm."""
        self._timer = _FIRING  # add() from an expire callback must not arm a timer
        items = self._items
        now = self._reactor.seconds()
        due: list[T] = []
        for item, deadline in items.items():
            if deadline > now:
                break
            due.append(item)
        try:
            for item in due:
                if items.pop(item, None) is not None:
                    self._expire(item)
        finally:
            self._timer = None
            if items:
                first = items[next(iter(items))]
                delay = max(0.0, first - self._reactor.seconds())
                self._timer = self._reactor.callLater(delay, self._fire)


class _Firing:
    """Stands in for the timer while expiries run; there is nothing to cancel."""

    @staticmethod
    def active() -> bool:
        return False


_FIRING = _Firing()
