"""A flood of silent or trickling connections from many source addresses over real loopback
sockets: at max_sniffing or a max_connections mark the oldest unclassified connection is
closed (its protocol's refusal, one rate-limited log line, counted), so curl is served long
before the preamble timeout would have freed a place."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from portmux.core.limits import Limits
from portmux.core.mux import Multiplexer, SniffSettings
from tests.core.test_limits import closed_by_server, connect, settle, wait_for

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")

LONG = 60.0
"""A preamble timeout no test waits for: only eviction can free a place."""
GRACE = 1.0
"""evict_sniffing_after: long enough that a burst of test connections is accepted within it."""


def received(client: socket.socket) -> bytes:
    """What the server sent before closing (b"" while nothing arrived yet)."""
    chunks = []
    while True:
        try:
            chunk = client.recv(4096)
        except BlockingIOError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class SniffPressureTests(TestCase):
    timeout = 60

    def make(self, limits: Limits, max_connections: int = 0) -> tuple[Multiplexer, int]:
        root = Resource()
        root.putChild(b"", Data(b"served\n", "text/plain"))
        if limits.evict_sniffing_after:
            limits = dataclasses.replace(limits, evict_sniffing_after=GRACE)
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=LONG), limits=limits)
        mux.add_route(root, name="web", protocol="http")
        factory = mux.listener_factory((), name="front", max_connections=max_connections)
        port = reactor.listenTCP(0, factory, backlog=128, interface="127.0.0.1")
        factory.listening(port)
        self.addCleanup(port.stopListening)
        return mux, port.getHost().port

    def flood(self, number: int, count: int, first: bytes = b"") -> list[socket.socket]:
        """``count`` connections, each from its own 127.0.1.x address; the first sends ``first``."""
        clients = [connect(number, f"127.0.1.{i + 1}") for i in range(count)]
        self.addCleanup(lambda: [c.close() for c in clients])
        if first:
            clients[0].setblocking(True)
            clients[0].sendall(first)
            clients[0].setblocking(False)
        return clients

    def portmux_lines(self) -> list[str]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events  # type: ignore[return-value]  # formatted by the caller

    async def curl(self, number: int) -> tuple[bytes, int]:
        out, _err, code = await getProcessOutputAndValue(
            "/usr/bin/env", ["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{number}/"],
        )
        return out, code

    async def test_flood_at_max_sniffing_evicts_the_oldest_and_curl_is_served(self) -> None:
        mux, number = self.make(Limits(max_connections=200, max_per_source=2, max_sniffing=20))
        events = self.portmux_lines()
        mux.log.burst, mux.log.interval = 5, LONG
        # max_sniffing silent connections from as many addresses (the oldest trickles).
        clients = self.flood(number, 20, first=b"GET / HTTP/1.1\r\nHo")
        await wait_for(lambda: mux.stats.accepted == 20)

        out, code = await self.curl(number)  # past max_sniffing: the oldest makes room
        self.assertEqual((out, code), (b"served\n", 0))
        self.assertEqual(mux.stats.refusals["preamble_timeout"], 0)  # served before any timeout
        self.assertEqual(mux.stats.refusals["sniff_evicted"], 1)
        self.assertEqual(mux.pressure.evicted, 1)
        clients[0].setblocking(True)
        clients[0].settimeout(10)
        self.assertTrue(clients[0].recv(4096).startswith(b"HTTP/1.1 408 "))  # the trickler: its protocol's refusal
        self.assertFalse(any(closed_by_server(c) for c in clients[1:]))
        self.assertEqual(mux.stats.sniffing, 19)

        # Thirty more: the first takes the place curl left, each other one evicts the
        # oldest (silent ones: a plain close), so the nineteen old ones go first.
        more = [connect(number, f"127.0.3.{i + 1}") for i in range(30)]
        self.addCleanup(lambda: [c.close() for c in more])
        await wait_for(lambda: mux.stats.refusals["sniff_evicted"] == 30)
        await wait_for(lambda: all(closed_by_server(c) for c in clients[1:] + more[:10]))
        self.assertFalse(any(closed_by_server(c) for c in more[10:]))
        self.assertEqual((mux.stats.sniffing, mux.admission.open), (20, 20))

        # A burst of log lines, then one "suppressed N" summary.
        self.assertEqual(mux.pressure.evicted, 30)
        mux.log.flush()
        texts = [formatEvent(e) for e in events if e.get("log_namespace") == "portmux"]  # type: ignore[arg-type]
        self.assertEqual(len([t for t in texts if "sniff_evicted" in t]), mux.log.burst)
        self.assertIn(f"suppressed {30 - mux.log.burst} similar refused lines", " ".join(texts))
        self.assertEqual(mux.stats.refusals["preamble_timeout"], 0)

    async def test_trickler_evicted_gets_its_protocols_refusal(self) -> None:
        mux, number = self.make(Limits(max_connections=50, max_sniffing=2))
        trickler = socket.create_connection(("127.0.0.1", number), source_address=("127.0.1.1", 0))
        self.addCleanup(trickler.close)
        trickler.sendall(b"GET / HTTP/1.1\r\nHo")
        silent = self.flood(number, 1)
        await wait_for(lambda: mux.stats.accepted == 2)
        await settle(mux.admission.limits.evict_sniffing_after + 0.1)
        out, code = await self.curl(number)
        self.assertEqual((out, code), (b"served\n", 0))
        trickler.settimeout(10)
        self.assertTrue(trickler.recv(4096).startswith(b"HTTP/1.1 408 "))
        self.assertFalse(closed_by_server(silent[0]))

    async def test_at_the_mark_stale_sniffers_make_room_instead_of_pausing(self) -> None:
        """max_sniffing does not bite (it is as large as the cap): the max_connections mark
        would pause accepting until the preamble timeout; the oldest stale sniffer goes."""
        mux, number = self.make(Limits(max_connections=10, max_sniffing=10))
        clients = self.flood(number, 10)  # a burst: accepted, then the port pauses
        await wait_for(lambda: mux.stats.accepted == 10)
        self.assertTrue(mux.admission.paused)
        self.assertEqual(mux.stats.refusals["sniff_evicted"], 0)

        out, code = await self.curl(number)  # waits in the backlog until the relief timer
        self.assertEqual((out, code), (b"served\n", 0))
        self.assertEqual(mux.stats.refusals["preamble_timeout"], 0)
        # The relief timer closed the oldest and accepting resumed; admitting curl, which
        # takes the last place, closed the next oldest (one place stays free at the mark).
        self.assertEqual(mux.stats.refusals["sniff_evicted"], 2)
        await wait_for(lambda: closed_by_server(clients[0]) and closed_by_server(clients[1]))
        self.assertFalse(any(closed_by_server(c) for c in clients[2:]))
        self.assertEqual(mux.stats.not_accepted["max_connections"], 0)

        # Each new connection taking the last place makes room the same way, oldest first.
        newer = [connect(number, f"127.0.4.{i + 1}") for i in range(3)]
        self.addCleanup(lambda: [c.close() for c in newer])
        await wait_for(lambda: mux.stats.refusals["sniff_evicted"] == 4)
        out, code = await self.curl(number)
        self.assertEqual((out, code), (b"served\n", 0))
        self.assertEqual(mux.stats.refusals["sniff_evicted"], 5)
        await wait_for(lambda: all(closed_by_server(c) for c in clients[2:5]))
        self.assertFalse(any(closed_by_server(c) for c in clients[5:] + newer))
        self.assertFalse(mux.admission.paused)

    async def test_listener_mark_evicts_only_that_listeners_sniffers(self) -> None:
        mux, number = self.make(Limits(max_connections=100, max_sniffing=100), max_connections=5)
        clients = self.flood(number, 5)
        await wait_for(lambda: mux.stats.accepted == 5)
        out, code = await self.curl(number)
        self.assertEqual((out, code), (b"served\n", 0))
        self.assertTrue(closed_by_server(clients[0]))
        self.assertEqual(mux.stats.refusals["preamble_timeout"], 0)

    async def test_eviction_off_keeps_sniffers_until_the_preamble_timeout(self) -> None:
        mux, number = self.make(Limits(max_connections=50, max_sniffing=3, evict_sniffing_after=0))
        clients = self.flood(number, 8)
        await wait_for(lambda: mux.stats.accepted == 8)
        await settle(0.3)
        out, code = await self.curl(number)
        self.assertEqual((out, code), (b"served\n", 0))
        self.assertEqual(mux.stats.refusals["sniff_evicted"], 0)
        self.assertFalse(any(closed_by_server(c) for c in clients))

    async def test_classified_connections_are_never_evicted(self) -> None:
        """A place held by a classified (idle keep-alive) HTTP client survives the flood."""
        mux, number = self.make(Limits(max_connections=20, max_sniffing=4))
        keeper = socket.create_connection(("127.0.0.1", number), source_address=("127.0.2.9", 0))
        self.addCleanup(keeper.close)
        keeper.setblocking(False)
        answers: list[bytes] = []
        keeper.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_for(lambda: answers.append(received(keeper)) or b"served" in b"".join(answers))
        clients = self.flood(number, 30)  # four sniff at a time: each new one evicts the oldest
        await wait_for(lambda: mux.stats.refusals["sniff_evicted"] == 26)
        await wait_for(lambda: all(closed_by_server(c) for c in clients[:26]))
        answers.clear()
        keeper.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_for(lambda: answers.append(received(keeper)) or b"served" in b"".join(answers))
        self.assertEqual(mux.stats.routes["web"].connections, 1)


class _Sniffer:
    """Stands in for a SniffingProtocol: counted by Admission, records its eviction."""

    def __init__(self, admission: Any, gate: Any) -> None:
        self.admission, self.gate = admission, gate
        self.waiting: dict[Any, float] | None = None
        self.evicted: str | None = None

    def evict(self, reason: str) -> None:
        self.evicted = reason
        self.admission.closed(self.gate, None)


def test_global_mark_relief_evicts_the_oldest_of_any_listener() -> None:
    """Two listeners share the global mark: when it is reached with fresh sniffers the
    ports pause, and the one relief timer evicts the oldest sniffer of either listener."""
    from twisted.internet.task import Clock

    from portmux.core.limits import Admission
    from portmux.core.sniff_pressure import SniffPressure

    clock = Clock()
    admission = Admission(clock, Limits(max_connections=4, max_sniffing=10, evict_sniffing_after=1.0))
    pressure = SniffPressure(clock, admission)
    first, second = admission.gate(), admission.gate()

    def arrive(gate: Any) -> _Sniffer:
        pressure.make_room(gate)
        sniffer = _Sniffer(admission, gate)
        pressure.track(sniffer, gate)
        admission.opened(gate, None)
        return sniffer

    oldest = arrive(second)
    clock.advance(0.1)
    others = [arrive(first) for _ in range(3)]  # the fourth place: the mark, nobody stale
    assert admission.paused and oldest.evicted is None
    reliefs = [c for c in clock.getDelayedCalls() if "_relieve" in repr(c)]
    assert len(reliefs) == 1  # one relief timer, not one per connection
    clock.advance(0.95)  # the oldest (second listener) is stale now; first's are not
    assert oldest.evicted is not None and not any(s.evicted for s in others)
    assert not admission.paused and admission.open == 3
    assert not [c for c in clock.getDelayedCalls() if "_relieve" in repr(c)]  # nothing to come back for
    clock.advance(0.1)
    newcomer = arrive(first)  # takes the last place again: the oldest is stale, it goes
    assert others[0].evicted is not None and newcomer.evicted is None
    assert not admission.paused and pressure.evicted == 2
    pressure.stop()
