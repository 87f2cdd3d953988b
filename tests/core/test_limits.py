"""Admission limits over real loopback sockets: at max_connections the listener stops
accepting (no accept-and-close, no log line per client) and resumes below it; per-source
caps and rates close the excess at once, and other sources are unaffected."""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from portmux.core.limits import Limits
from portmux.core.mux import Multiplexer, SniffSettings


async def wait_for(condition: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.01, lambda: None)


async def settle(seconds: float = 0.2) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    client = socket.socket()
    client.bind((source, 0))
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", port))
    return client


def closed_by_server(client: socket.socket) -> bool:
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


class LimitTests(TestCase):
    timeout = 60

    def listen(self, mux: Multiplexer, max_connections: int = 0) -> tuple[int, Any]:
        factory = mux.listener_factory((), max_connections=max_connections)
        port = reactor.listenTCP(0, factory, backlog=128, interface="127.0.0.1")
        factory.listening(port)
        self.addCleanup(port.stopListening)
        return port.getHost().port, port

    def clients(self) -> list[socket.socket]:
        made: list[socket.socket] = []
        self.addCleanup(lambda: [c.close() for c in made])
        return made

    def log_lines(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    async def test_global_mark_pauses_accepting_and_resumes_below(self) -> None:
        # Silent clients stand in for long-lived connections here: stale-sniffer
        # eviction is off (tests/core/test_sniff_pressure.py covers it).
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60),
                          limits=Limits(max_connections=5, evict_sniffing_after=0))
        number, port = self.listen(mux)
        events = self.log_lines()
        clients = self.clients()
        for _ in range(5):
            clients.append(connect(number))
        await wait_for(lambda: mux.stats.accepted == 5)
        self.assertTrue(mux.admission.paused)
        self.assertNotIn(port, reactor.getReaders())
        for _ in range(50):  # a flood while full: held in the kernel's backlog, not accepted
            clients.append(connect(number))
        await settle()
        self.assertEqual(mux.stats.accepted, 5)
        self.assertFalse(any(closed_by_server(c) for c in clients))
        self.assertEqual(sum(mux.stats.refusals.values()), 0)
        self.assertEqual([e for e in events if "portmux" in str(e.get("log_namespace"))], [])
        clients[0].close()  # one leaves: exactly one more is accepted
        await wait_for(lambda: mux.stats.accepted == 6)
        await settle()
        self.assertEqual(mux.stats.accepted, 6)
        self.assertTrue(mux.admission.paused)
        for client in clients[1:5]:
            client.close()
        await wait_for(lambda: mux.stats.accepted == 10)
        self.assertEqual(mux.admission.open, 5)

    async def test_listener_mark_pauses_only_that_listener(self) -> None:
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60),
                          limits=Limits(evict_sniffing_after=0))
        small, small_port = self.listen(mux, max_connections=2)
        other, other_port = self.listen(mux)
        clients = self.clients()
        clients += [connect(small) for _ in range(2)]
        await wait_for(lambda: mux.stats.accepted == 2)
        waiting = [connect(small) for _ in range(4)]  # held in the backlog, not accepted
        clients += waiting
        clients += [connect(other) for _ in range(3)]
        await wait_for(lambda: mux.stats.accepted == 5)
        await settle()
        self.assertEqual(mux.stats.accepted, 5)
        self.assertNotIn(small_port, reactor.getReaders())
        self.assertIn(other_port, reactor.getReaders())
        self.assertFalse(any(closed_by_server(c) for c in waiting))
        clients[0].close()
        await wait_for(lambda: mux.stats.accepted == 6)
        self.assertEqual(sum(mux.stats.refusals.values()), 0)

    async def test_accept_batches_are_sized_to_the_free_places(self) -> None:
        """Twisted accepts up to 100 connections per readiness event; none past the mark is
        accepted only to be closed."""
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60),
                          limits=Limits(evict_sniffing_after=0))
        small, _ = self.listen(mux, max_connections=2)
        clients = self.clients()
        clients += [connect(small) for _ in range(6)]
        await wait_for(lambda: mux.stats.accepted == 2)
        await settle()
        self.assertFalse(any(closed_by_server(c) for c in clients))
        self.assertEqual(mux.stats.not_accepted["max_connections"], 0)
        self.assertEqual(mux.admission.open, 2)

    async def test_max_per_source_closes_the_excess_of_one_source_only(self) -> None:
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60),
                          limits=Limits(max_per_source=3))
        number, _ = self.listen(mux)
        clients = self.clients()
        hog = [connect(number, "127.0.0.2") for _ in range(6)]
        clients += hog
        await wait_for(lambda: mux.stats.not_accepted["per_source_limit"] == 3)
        await wait_for(lambda: sum(closed_by_server(c) for c in hog) == 3)
        others = [connect(number, "127.0.0.3") for _ in range(3)]
        clients += others
        await wait_for(lambda: mux.admission.open == 6)
        self.assertFalse(any(closed_by_server(c) for c in others))
        hog[0].close()  # below the cap again: that source may connect once more
        await wait_for(lambda: mux.admission.open == 5)
        clients.append(connect(number, "127.0.0.2"))
        await wait_for(lambda: mux.admission.open == 6)
        self.assertEqual(mux.stats.not_accepted["per_source_limit"], 3)

    async def test_a_flood_of_limit_closes_logs_a_burst_and_a_summary(self) -> None:
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60),
                          limits=Limits(max_per_source=1))
        mux.log.interval = 0.5
        number, _ = self.listen(mux)
        events = self.log_lines()
        clients = self.clients()
        clients += [connect(number, "127.0.0.2") for _ in range(101)]
        await wait_for(lambda: mux.stats.not_accepted["per_source_limit"] == 100)
        await settle(0.7)
        texts = [formatEvent(e) for e in events if e.get("log_namespace") == "portmux"]
        closes = [t for t in texts if "max_per_source" in t]
        self.assertEqual(len(closes), mux.log.burst)
        self.assertIn(f"suppressed {100 - mux.log.burst} similar source-limit lines", " ".join(texts))

    async def test_new_connection_rate_per_source(self) -> None:
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60),
                          limits=Limits(new_per_source_rate=1.0, new_per_source_burst=2))
        number, _ = self.listen(mux)
        clients = self.clients()
        clients += [connect(number, "127.0.0.2") for _ in range(5)]
        await wait_for(lambda: mux.stats.not_accepted["per_source_limit"] == 3)
        clients.append(connect(number, "127.0.0.4"))
        await wait_for(lambda: mux.admission.open == 3)
        await settle(1.1)  # one token back
        clients.append(connect(number, "127.0.0.2"))
        await wait_for(lambda: mux.admission.open == 4)
        self.assertEqual(mux.stats.not_accepted["per_source_limit"], 3)


def test_new_limits_pause_or_resume_at_once() -> None:
    from twisted.internet.task import Clock

    from portmux.core.limits import Admission

    class Port:
        reading = True
        connected = True

        def stopReading(self) -> None:
            self.reading = False

        def startReading(self) -> None:
            self.reading = True

    admission = Admission(Clock(), Limits(max_connections=10))
    gate = admission.gate()
    port = Port()
    gate.ports.append(port)
    for _ in range(5):
        admission.opened(gate, None)
    assert port.reading
    admission.set_limits(Limits(max_connections=4))  # a reload lowers the mark below the open count
    assert not port.reading
    admission.set_limits(Limits(max_connections=100))
    assert port.reading
