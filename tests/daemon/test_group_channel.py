"""The process group's channel in one process: two Multiplexers joined by a real socketpair.

The "parent" multiplexer's registered routes reach the "child" one; a real TCP
client of the child is passed up with SCM_RIGHTS and served by the parent's
route; with the parent gone the child refuses it itself, leaking no descriptor.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.daemon.group_channel import ChildLink, ParentLink, match_of, read_routes
from portmux.targets.echo import EchoFactory
from portmux.targets.factory import FactoryTarget
from tests.daemon.group_support import linked
from tests.support import fd_count, log_lines, turn, wait_until

ROUTE = "handoff:protocol=tcpmux,service=echo-h"


class ChannelTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.lines = log_lines(self)
        self.parent = Multiplexer(reactor)
        self.child = Multiplexer(reactor)
        self.route = Route(ROUTE, Match(protocol="tcpmux", service="echo-h"), FactoryTarget(EchoFactory()))

    async def link(self) -> tuple[ChildLink, ParentLink]:
        """Join the two multiplexers as ProcessGroup and group_child do (both ends in this reactor)."""
        return await linked(self, self.parent, self.child)  # type: ignore[no-any-return]

    def test_read_routes_before_serving(self) -> None:
        """A starting child reads the whole state, blocking, before its reactor runs."""
        from portmux.control import _framing as frames

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.sendall(b"".join(frames.encode(m) for m in (
            {"op": "reset"}, {"op": "add", "name": ROUTE, "match": self.route.match.to_keys()},
            {"op": "synced"}, {"op": "remove", "name": ROUTE})))
        child_side = ParentLink(self.child)
        self.assertTrue(read_routes(child_side, theirs.fileno(), 5.0))
        self.assertEqual([r.name for r in self.child.registered_routes], [])  # the remove came along too
        silent = ParentLink(self.child)
        self.assertFalse(read_routes(silent, theirs.fileno(), 0.2))  # nothing more: give up, serve anyway

    async def client(self, port: int, data: bytes, want: int = 1 << 30) -> bytes:
        """A real loopback client: send ``data``, read ``want`` bytes or until the server closes (3 s)."""
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        got = b""
        try:
            sock.sendall(data)
            for _ in range(300):
                await turn()
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                got += chunk
                if len(got) >= want:
                    break
            return got
        finally:
            sock.close()

    def test_match_round_trip(self) -> None:
        for match in (Match(protocol="http", host="*.example", path="/api"),
                      Match(service="echo-h"), Match(via="net.tcp://x/y", network=match_of(
                          {"network": ["127.0.0.0/8"]}).network)):
            self.assertEqual(match_of(match.to_keys()), match)

    async def test_routes_follow_the_parent(self) -> None:
        self.parent.add_registered_route(self.route)  # before the child starts: the sync carries it
        await self.link()
        self.assertEqual([r.name for r in self.child.registered_routes], [ROUTE])
        self.assertEqual(self.child.router.registered.get(ROUTE).match, self.route.match)
        self.parent.remove_registered_route(self.route)
        await wait_until(lambda: not self.child.registered_routes)
        other = Route("handoff:protocol=http,host=a.example", Match(protocol="http", host="a.example"),
                      self.route.target)
        self.parent.add_registered_route(other)
        await wait_until(lambda: [r.name for r in self.child.registered_routes] == [other.name])
        self.parent.set_registered_routes([self.route])  # a reset resends everything
        await wait_until(lambda: [r.name for r in self.child.registered_routes] == [ROUTE])

    async def test_connections_reach_the_parents_route_and_refusal_when_gone(self) -> None:
        self.parent.add_registered_route(self.route)
        parent_side, child_side = await self.link()
        port = reactor.listenTCP(0, self.child.listener_factory(name="child"), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        first = await self.client(number, b"echo-h\r\nwarm\n", 8)
        self.assertEqual(first, b"+\r\nwarm\n")
        await wait_until(lambda: not self.parent.connections and not self.child.connections)
        before = fd_count()
        for index in range(10):
            payload = b"client %d " % index + os.urandom(3000).hex().encode()
            got = await self.client(number, b"echo-h\r\n" + payload, len(payload) + 3)
            self.assertEqual(got, b"+\r\n" + payload, index)
        await wait_until(lambda: not self.parent.connections and not self.child.connections)
        self.assertEqual(fd_count(), before)
        self.assertEqual(self.parent.stats.for_listener("process 2").routed[ROUTE], 11)
        # Counted once between the two: accepted by the child, routed by the parent.
        self.assertEqual((self.child.stats.accepted, self.parent.stats.accepted), (11, 0))
        self.assertEqual((self.child.stats.for_route(ROUTE).connections,
                          self.parent.stats.for_route(ROUTE).connections), (0, 11))

        # The parent is gone: the child's route stays, its connections are refused in TCPMUX terms.
        parent_side.transport.loseConnection()
        await wait_until(lambda: child_side.gone)
        before = fd_count()
        refused = await self.client(number, b"echo-h\r\nhello\n")
        self.assertTrue(refused.startswith(b"-"), refused)
        await wait_until(lambda: not self.child.connections)
        self.assertEqual(fd_count(), before)
        self.assertEqual(len([line for line in self.lines if line.startswith("refused")]), 1, self.lines)
        self.assertEqual(sum(self.child.stats.refusals.values()), 1, self.child.stats.refusals)

    async def test_a_proxy_headers_addresses_travel_up(self) -> None:
        """Behind a trusted load balancer the parent's target sees the client the child saw."""
        from twisted.internet.protocol import Protocol

        from portmux.core.routing import parse_networks

        class TellPeer(Protocol):
            def connectionMade(self) -> None:
                peer, host = self.transport.getPeer(), self.transport.getHost()  # type: ignore[union-attr]
                self.transport.write(f"{peer.host}:{peer.port} {host.host}:{host.port}\n".encode())  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        self.parent.add_registered_route(Route(ROUTE, self.route.match, FactoryTarget(Factory.forProtocol(TellPeer))))
        await self.link()
        listener = self.child.listener_factory(parse_networks(["127.0.0.0/8"]), name="balanced")
        port = reactor.listenTCP(0, listener, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        header = b"PROXY TCP4 127.0.0.7 127.0.0.9 40000 443\r\n"
        got = await self.client(port.getHost().port, header + b"echo-h\r\n")
        self.assertEqual(got, b"+\r\n127.0.0.7:40000 127.0.0.9:443\n")

    async def test_worker_gone_meanwhile_is_refused_as_with_one_process(self) -> None:
        """The parent dropped the route before the child heard: the parent refuses, like one process."""
        self.parent.add_registered_route(self.route)
        parent_side, _ = await self.link()
        child_port = reactor.listenTCP(0, self.child.listener_factory(name="child"), interface="127.0.0.1")
        self.addCleanup(child_port.stopListening)
        self.parent.registered_watchers.remove(parent_side.routes_changed)  # the child misses the news
        self.parent.remove_registered_route(self.route)
        self.assertEqual([r.name for r in self.child.registered_routes], [ROUTE])
        alone = Multiplexer(reactor)  # processes = 1, with no worker registered
        alone_port = reactor.listenTCP(0, alone.listener_factory(name="alone"), interface="127.0.0.1")
        self.addCleanup(alone_port.stopListening)
        expected = await self.client(alone_port.getHost().port, b"echo-h\r\nhello\n")
        await wait_until(lambda: not alone.connections)
        self.lines.clear()
        before = fd_count()
        got = await self.client(child_port.getHost().port, b"echo-h\r\nhello\n")
        self.assertEqual(got, expected)
        self.assertTrue(got.startswith(b"-"), got)
        await wait_until(lambda: not self.parent.connections and not self.child.connections)
        self.assertEqual(fd_count(), before)
        self.assertEqual(len([line for line in self.lines if line.startswith("refused")]), 1, self.lines)

    async def test_a_childs_route_describes_the_parents(self) -> None:
        self.parent.add_registered_route(self.route)
        await self.link()
        target = self.child.router.registered.get(ROUTE).target
        self.assertEqual(target.description, f"{self.route.target.description} (through process 1)")
        self.assertEqual(target.kind, "handoff")

    async def test_a_childs_metrics_question_carries_its_numbers_and_gets_the_groups(self) -> None:
        """/metrics in a child: its own numbers go up with the question, the group's view comes back."""
        from portmux.daemon.group_metrics import GroupCounts

        parent_side, child_side = await self.link()
        counts = GroupCounts(self.parent)
        generation = counts.started(1)

        def answer(report: Any) -> dict[str, Any]:  # as ProcessGroup answers its slot 1's child
            counts.reported(1, generation, report)
            return dict(counts.view(2), answering=2)

        parent_side.answer_metrics = answer
        self.child.stats.for_listener("main").accepted = 5
        self.child.stats.accepted = 5
        self.parent.stats.for_listener("main").accepted = 2
        view = await child_side.ask_metrics()
        self.assertEqual(view["counts"]["accepted"], {"main": 7})
        self.assertEqual(view["members"]["2"]["accepted"], 5)
        self.assertEqual(view["answering"], 2)

    async def test_a_metrics_question_fails_cleanly_without_an_answer(self) -> None:
        parent_side, child_side = await self.link()  # answer_metrics unset: the parent says so
        with self.assertRaises(ValueError):
            await child_side.ask_metrics()
        parent_side.transport.loseConnection()
        await wait_until(lambda: child_side.gone)
        with self.assertRaises(ConnectionError):
            await child_side.ask_metrics()
