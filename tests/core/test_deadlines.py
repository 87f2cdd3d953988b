"""DeadlineQueue: one timer for many same-delay deadlines."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portmux.core.deadlines import DeadlineQueue


class DeadlineQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.queue: DeadlineQueue[str] = DeadlineQueue(self.clock, 10.0, self.expired.append)

    def test_expires_exactly_at_the_deadline(self) -> None:
        self.queue.add("a")
        self.clock.advance(9.999)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.expired, ["a"])
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer_for_many_items(self) -> None:
        for name in "abcde":
            self.queue.add(name)
            self.clock.advance(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)  # now 10: "a" is due
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(3)
        self.assertEqual(self.expired, ["a", "b", "c", "d"])
        self.clock.advance(1)
        self.assertEqual(self.expired, list("abcde"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_discarded_items_never_expire(self) -> None:
        self.queue.add("a")
        self.clock.advance(1)
        self.queue.add("b")
        self.queue.discard("a")
        self.clock.advance(9)  # a's old deadline: the timer re-arms for b
        self.assertEqual(self.expired, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(self.expired, ["b"])

    def test_timer_stops_when_the_queue_empties(self) -> None:
        self.queue.add("a")
        self.queue.add("b")
        self.queue.discard("a")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.queue.discard("b")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.queue.discard("b")  # twice is harmless
        self.assertNotIn("b", self.queue)

    def test_re_adding_restarts_the_clock(self) -> None:
        self.queue.add("a")
        self.queue.add("b")
        self.clock.advance(5)
        self.queue.add("a")
        self.clock.advance(5)
        self.assertEqual(self.expired, ["b"])
        self.clock.advance(5)
        self.assertEqual(self.expired, ["b", "a"])

    def test_expire_callback_may_add_and_discard(self) -> None:
        def expire(item: str) -> None:
            self.expired.append(item)
            self.queue.discard("other")
            if item == "a":
                self.queue.add("again")

        self.queue = DeadlineQueue(self.clock, 2.0, expire)
        self.queue.add("a")
        self.queue.add("other")
        self.clock.advance(2)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(2)
        self.assertEqual(self.expired, ["a", "again"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clear_stops_everything(self) -> None:
        self.queue.add("a")
        self.queue.clear()
        self.clock.advance(20)
        self.assertEqual(self.expired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_emptied_and_refilled_while_firing_keeps_one_timer(self) -> None:
        def expire(item: str) -> None:
            self.expired.append(item)
            if item == "a":
                self.queue.discard("b")  # empties the queue mid-expiry
                self.queue.add("c")

        self.queue = DeadlineQueue(self.clock, 2.0, expire)
        self.queue.add("a")
        self.clock.advance(1)
        self.queue.add("b")
        self.clock.advance(1)
        self.assertEqual(self.expired, ["a"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.expired, ["a", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
