"""Two in-process nodes (Cluster + Registry + Multiplexer each) sharing routes through a real etcd."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from portmux.control._cluster import Cluster, registration_key, registry_health
from portmux.control._etcd import EtcdClient
from portmux.control._registry import RegistrationError, Registry, Reservation
from portmux.control._server import WorkerGroup
from portmux.core.mux import Multiplexer
from portmux.core.preamble import Preamble
from portmux.core.routing import Match, Route
from portmux.targets.proxy import ProxyTarget
from tests.cluster.harness import free_port
from tests.control.test_etcd import EtcdServer

_prefixes = itertools.count()


@dataclass(eq=False)
class Worker:
    """A registration's owner, as the control connection would be."""

    pid: int
    uid: int = 1000
    gid: int = 1000
    label: str = "test worker"


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello from " + request.getHeader(b"host") + b"\n"


async def until(predicate: Any, what: str, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class ClusterTests(TestCase):
    timeout = 60

    @classmethod
    def setUpClass(cls) -> None:
        EtcdServer.start(cls)

    @classmethod
    def tearDownClass(cls) -> None:
        EtcdServer.stop(cls)

    def setUp(self) -> None:
        self.prefix = f"/t-cluster-{next(_prefixes)}/"
        self.stored: dict[str, list[Route]] = {}

    def node(self, name: str, endpoints: list[str] | None = None,
             reservations: tuple[Reservation, ...] = ()) -> tuple[Cluster, Registry, Multiplexer]:
        mux = Multiplexer(reactor)
        client = EtcdClient(reactor, endpoints or [self.etcd.url], timeout=1.0)

        def read_route(route_name: str, raw: bytes) -> Route:
            from portmux.daemon.config import ConfigError, read_stored_route, target_kinds

            try:
                return read_stored_route(route_name, raw, f"etcd:{self.prefix}routes/{route_name}", reactor,
                                         target_kinds())
            except ConfigError as error:
                raise ValueError(str(error)) from None

        cluster = Cluster(reactor, client, mux, prefix=self.prefix, node=name, lease_ttl=2,
                          read_route=read_route, set_etcd_routes=lambda routes: self.stored.__setitem__(name, routes))
        registry = Registry(mux, reservations, lambda group: group, lambda e: ProxyTarget([e]), group_type=WorkerGroup)
        cluster.startService()
        self.addCleanup(cluster.stopService)
        return cluster, registry, mux

    async def joined(self, *clusters: Cluster) -> None:
        await until(lambda: all(not c.health.stale for c in clusters), "nodes to join etcd")

    async def register(self, cluster: Cluster, registry: Registry, owner: Worker, **match: Any) -> Any:
        advertise = match.pop("advertise", None)
        return await cluster.register(registry, owner, Match(**match).canonical(), "proxy",
                                      match.pop("endpoint", "tcp:127.0.0.1:1"), advertise)

    # -- tests ---------------------------------------------------------------

    async def _remote(self) -> None:
        a, reg_a, mux_a = self.node("a")
        b, reg_b, mux_b = self.node("b")
        await self.joined(a, b)
        worker = Worker(101)
        await self.register(a, reg_a, worker, protocol="http", host="x.test", path="/",
                            advertise="tcp:127.0.0.2:9001")
        self.assertEqual([r.name for r in mux_a.registered_routes], ["proxy:protocol=http,host=x.test,path=/"])
        await until(lambda: len(mux_b.registered_routes) == 1, "b to route a's registration")
        route = mux_b.registered_routes[0]
        self.assertEqual(route.name, "a:protocol=http,host=x.test,path=/")
        self.assertEqual(route.target.endpoints, ("tcp:127.0.0.2:9001",))
        self.assertIn("registered on node a", route.target.description)
        chosen = mux_b.router.select(Preamble("http", host="x.test", path="/index"))
        self.assertIs(chosen, route)
        # The same address on the other node is refused cluster-wide, naming the holder.
        with self.assertRaises(RegistrationError) as caught:
            await self.register(b, reg_b, Worker(202), protocol="http", host="X.TEST", path="/",
                                advertise="tcp:127.0.0.3:9001")
        self.assertEqual(caught.exception.code, "ConflictingRegistration")
        self.assertIn("already registered on node a by uid 1000 (pid 101)", caught.exception.message)
        self.assertEqual(reg_b.groups, {})
        # Leaving deletes the key: gone on b too.
        reg_a.unregister_all(worker)
        a.released(reg_a, worker, [Match(protocol="http", host="x.test", path="/")])
        await until(lambda: not mux_b.registered_routes, "b to drop the route")
        # Now b may take it.
        await self.register(b, reg_b, Worker(202), protocol="http", host="x.test", path="/",
                            advertise="tcp:127.0.0.3:9001")
        await until(lambda: [r.name for r in mux_a.registered_routes] == ["b:protocol=http,host=x.test,path=/"],
                    "a to route b's registration")

    def test_registrations_are_routed_everywhere_and_conflicts_refused(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._remote())

    async def _group(self) -> None:
        a, reg_a, _ = self.node("a")
        b, _, mux_b = self.node("b")
        await self.joined(a, b)
        one, two = Worker(1), Worker(2)
        match = Match(protocol="tcpmux", service="svc").canonical()
        await a.register(reg_a, one, match, "proxy", "tcp:127.0.0.1:1", "tcp:127.0.0.2:7001")
        await a.register(reg_a, two, match, "proxy", "tcp:127.0.0.1:2", "tcp:127.0.0.2:7002")
        await until(lambda: mux_b.registered_routes and len(mux_b.registered_routes[0].target.endpoints) == 2,
                    "b to see both members' addresses")
        reg_a.unregister(one, match)
        a.released(reg_a, one, [match])
        await until(lambda: mux_b.registered_routes[0].target.endpoints == ("tcp:127.0.0.2:7002",),
                    "b to see the remaining member only")

    def test_a_group_advertises_every_members_address(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._group())

    async def _takeover(self) -> None:
        first, reg_first, _ = self.node("a")
        b, _, mux_b = self.node("b")
        await self.joined(first, b)
        await self.register(first, reg_first, Worker(1), protocol="http", host="t.test", advertise="tcp:127.0.0.2:1")
        # Node a restarts before its old lease expires: its new run takes its own keys over.
        second, reg_second, _ = self.node("a")
        await self.joined(second)
        await self.register(second, reg_second, Worker(2), protocol="http", host="t.test",
                            advertise="tcp:127.0.0.2:2")
        await first.client.revoke(first.lease)  # the old run's lease ends: the key is no longer under it
        await until(lambda: [r.target.endpoints for r in mux_b.registered_routes] == [("tcp:127.0.0.2:2",)],
                    "b to route to the new run's worker")
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(mux_b.registered_routes), 1)

    def test_a_restarted_node_takes_over_its_previous_runs_claims(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._takeover())

    async def _reserved(self) -> None:
        reserved = Reservation(Match(host="r.test"), (0,))
        a, reg_a, _ = self.node("a", reservations=(reserved,))
        b, reg_b, _ = self.node("b")
        await self.joined(a, b)
        with self.assertRaises(RegistrationError) as caught:
            await self.register(a, reg_a, Worker(5), protocol="http", host="r.test", advertise="tcp:127.0.0.2:1")
        self.assertEqual(caught.exception.code, "AddressReserved")
        # The refused claim was released: another node's worker may register it (its node has no reservation).
        await self.register(b, reg_b, Worker(6), protocol="http", host="r.test", advertise="tcp:127.0.0.3:1")
        self.assertEqual(len(reg_b.groups), 1)

    def test_reservations_apply_where_the_worker_connects(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._reserved())

    async def _stored(self) -> None:
        a, _, _ = self.node("a")
        await self.joined(a)
        key = f"{self.prefix}routes/ssh"
        self.etcd.ctl("put", key, json.dumps({"match": {"protocol": "ssh"}, "proxy": ["tcp:127.0.0.1:22"]}))
        await until(lambda: self.stored.get("a"), "the stored route")
        self.assertEqual([(r.name, r.match) for r in self.stored["a"]], [("ssh", Match(protocol="ssh"))])
        # An invalid one is refused with the config checker's message, and the valid ones stay.
        self.etcd.ctl("put", f"{self.prefix}routes/bad", json.dumps({"match": {"protocol": "sshh"}, "echo": True}))
        await until(lambda: "bad" in a.health.route_errors, "the refusal")
        self.assertTrue(a.health.route_errors["bad"].startswith(
            f"etcd:{self.prefix}routes/bad: match.protocol: unknown protocol 'sshh'; known: "), a.health.route_errors)
        # The same words as the config file's checker uses for that key.
        from portmux.daemon.config import ConfigError, parse_config

        with self.assertRaises(ConfigError) as caught:
            parse_config('[[listen]]\nendpoint = "tcp:0"\n[[route]]\nname = "bad"\nmatch = { protocol = "sshh" }\n'
                         'echo = true\n', "f.toml", reactor)
        file_message = str(caught.exception).split("match.protocol: ", 1)[1]
        self.assertEqual(a.health.route_errors["bad"].split("match.protocol: ", 1)[1], file_message)
        self.assertEqual([r.name for r in self.stored["a"]], ["ssh"])
        self.etcd.ctl("put", f"{self.prefix}routes/bad", json.dumps({"match": {"protocol": "ssh"}, "echo": True}))
        await until(lambda: not a.health.route_errors and len(self.stored["a"]) == 2, "the fixed route")
        self.etcd.ctl("del", key)
        await until(lambda: [r.name for r in self.stored["a"]] == ["bad"], "the deleted route to go")

    def test_routes_stored_in_etcd_are_checked_like_the_config(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stored())

    async def _unreachable(self) -> None:
        closed = f"http://127.0.0.1:{free_port()}"
        a, reg_a, mux = self.node("a", endpoints=[closed])
        await until(lambda: "refused" in a.health.reason, "the first attempt")
        health = registry_health(mux)
        assert health is not None
        self.assertTrue(health.stale)
        with self.assertRaises(RegistrationError) as caught:
            await self.register(a, reg_a, Worker(1), protocol="http", host="y.test")
        self.assertEqual(caught.exception.code, "RegistryUnavailable")
        self.assertIn(f"etcd {closed}) is unreachable", caught.exception.message)
        self.assertIn("new registrations are refused until it is back", caught.exception.message)

    def test_unreachable_etcd_refuses_registrations_with_the_reason(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._unreachable())

    async def _many(self, count: int = 2000) -> None:
        """Another node's ``count`` claims (written as its Cluster writes them) reach node b one by one."""
        site = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        advertise = f"tcp:127.0.0.1:{site.getHost().port}"
        b, _, mux_b = self.node("b")
        await self.joined(b)
        front = await mux_b.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(front.stopListening)
        other = EtcdClient(reactor, [self.etcd.url])
        self.addCleanup(other.close)
        lease = await other.grant(10)

        async def claim(i: int) -> None:
            match = Match(protocol="http", host=f"h{i}.test").canonical()
            value = json.dumps({"match": match.to_keys(), "mode": "proxy", "uid": 1000, "node": "c", "pid": i,
                                "advertise": [advertise]}).encode()
            created, _ = await other.create(registration_key(self.prefix.encode(), match), value, lease)
            self.assertTrue(created)

        await claim(0)
        await until(lambda: len(mux_b.registered_routes) == 1, "the first route on b")
        route_zero = mux_b.registered_routes[0]
        rebuilds: list[object] = []
        set_router = mux_b.set_router
        mux_b.set_router = lambda router: (rebuilds.append(router), set_router(router))  # type: ignore[method-assign]
        for start in range(1, count, 50):  # 50 registrations in flight, like many workers starting at once
            await gatherResults([Deferred.fromCoroutine(claim(i)) for i in range(start, min(start + 50, count))])
        await until(lambda: len(mux_b.registered_routes) == count, f"{count} routes on b", limit=60)
        # Applied event by event from the one watch: no re-read of the table, no rebuilt route objects.
        self.assertEqual(b.health.full_reads, 1)
        self.assertEqual(b.health.events, count)
        self.assertIs(mux_b.registered_routes[0], route_zero)
        self.assertEqual(rebuilds, [])  # each route went into the Router's registered layer on its own
        # Every node keeps routing: real curl through b reaches the worker for the first and last names.
        for host in ("h0.test", f"h{count - 1}.test"):
            out, _, code = await getProcessOutputAndValue(
                "curl", ["-s", "-m", "5", "-H", f"Host: {host}", f"http://127.0.0.1:{front.getHost().port}/"])
            self.assertEqual((code, out), (0, f"hello from {host}\n".encode()))
        # Removing them is incremental too.
        await other.revoke(lease)
        await until(lambda: not mux_b.registered_routes, "the routes to go with the other node's lease")
        self.assertEqual(b.health.events, 2 * count)

    def test_two_thousand_registrations_are_applied_incrementally(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._many())
