"""Cheap eviction under a silent flood, over real loopback sockets: an evicted client that
sent nothing sees a reset (no refusal, no FIN handshake), one with a partial HTTP request
still gets 408 and a clean close, and while evicting the listening port accepts small
batches so a reactor iteration is never hundreds of accept-and-evicts."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from portmux.core.limits import Admission, Limits
from portmux.core.mux import Multiplexer, SniffSettings
from portmux.core.sniff_pressure import PRESSURE_BATCH
from tests.core.test_limits import closed_by_server, connect, settle, wait_for

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def ends_with_reset(client: socket.socket) -> bool:
    """True when the server reset the connection (nothing to read before it)."""
    client.setblocking(True)
    client.settimeout(10)
    try:
        client.recv(4096)
    except ConnectionResetError:
        return True
    return False


def answer_then_fin(client: socket.socket) -> bytes:
    """Everything the server sent, read until its clean FIN (a reset fails the test)."""
    client.setblocking(True)
    client.settimeout(10)
    chunks = []
    while chunk := client.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


class SniffChurnTests(TestCase):
    timeout = 60

    def make(self, limits: Limits) -> tuple[Multiplexer, Any]:
        root = Resource()
        root.putChild(b"", Data(b"served\n", "text/plain"))
        limits = dataclasses.replace(limits, evict_sniffing_after=1.0)
        mux = Multiplexer(reactor, [], settings=SniffSettings(preamble_timeout=60.0), limits=limits)
        mux.add_route(root, name="web", protocol="http")
        factory = mux.listener_factory((), name="front")
        port = reactor.listenTCP(0, factory, backlog=128, interface="127.0.0.1")
        factory.listening(port)
        self.addCleanup(port.stopListening)
        self.addCleanup(mux.pressure.stop)
        return mux, port

    def clients(self) -> list[socket.socket]:
        clients: list[socket.socket] = []
        self.addCleanup(lambda: [c.close() for c in clients])
        return clients

    async def test_a_silent_evicted_client_is_reset_a_partial_request_gets_408(self) -> None:
        mux, port = self.make(Limits(max_connections=100, max_per_source=2, max_sniffing=3))
        number = port.getHost().port
        clients = self.clients()
        clients.append(connect(number, "127.0.1.1"))  # oldest: sends half a request
        clients[0].setblocking(True)
        clients[0].sendall(b"GET / HTTP/1.1\r\nHo")
        clients[0].setblocking(False)
        clients += [connect(number, f"127.0.1.{i}") for i in (2, 3)]  # silent
        await wait_for(lambda: mux.stats.sniffing == 3 and len(mux.connections) == 3)
        await settle(0.3)  # the half request is read (and kept: the probe wants more)

        clients.append(connect(number, "127.0.1.4"))  # evicts the trickler: 408, then FIN
        await wait_for(lambda: mux.stats.refusals["sniff_evicted"] == 1)
        self.assertTrue(answer_then_fin(clients[0]).startswith(b"HTTP/1.1 408 "))

        clients.append(connect(number, "127.0.1.5"))  # evicts a silent one: a reset
        await wait_for(lambda: mux.stats.refusals["sniff_evicted"] == 2)
        self.assertTrue(ends_with_reset(clients[1]))
        self.assertFalse(any(closed_by_server(c) for c in clients[2:]))
        self.assertEqual((mux.stats.sniffing, mux.admission.open, len(mux.connections)), (3, 3, 3))

    async def test_evicting_shrinks_accept_batches_and_curl_is_still_served(self) -> None:
        mux, port = self.make(Limits(max_connections=1000, max_per_source=2, max_sniffing=10))
        number = port.getHost().port
        port.numberAccepts = 500  # as Twisted grows it under a burst of accepts
        clients = self.clients()
        clients += [connect(number, f"127.0.2.{i + 1}") for i in range(40)]
        await wait_for(lambda: mux.stats.refusals["sniff_evicted"] == 30)
        await wait_for(lambda: port.numberAccepts <= PRESSURE_BATCH)
        self.assertEqual(mux.stats.sniffing, 10)
        resets = [ends_with_reset(c) for c in clients[:30]]
        self.assertEqual(resets, [True] * 30)

        out, _err, code = await getProcessOutputAndValue(
            "/usr/bin/env", ["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{number}/"],
        )
        self.assertEqual((out, code), (b"served\n", 0))


def test_ipv4_source_networks_without_ipaddress_objects() -> None:
    from twisted.internet.task import Clock

    admission = Admission(Clock(), Limits(new_per_source_rate=5.0, source_prefix_v4=24))
    assert admission.source_key("127.0.1.77") == "127.0.1.0/24"
    assert admission.source_key("10.200.3.4") == "10.200.3.0/24"
    assert str(admission.source_key("::ffff:127.0.1.77")) == "::/64"
    host = Admission(Clock(), Limits(max_per_source=5))
    assert host.source_key("127.0.1.77") == "127.0.1.77"
    assert Admission(Clock(), Limits()).source_key("127.0.1.77") is None
