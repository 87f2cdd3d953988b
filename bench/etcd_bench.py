"""Registration-to-routable latency across portmux nodes sharing routes through etcd.

    python bench/etcd_bench.py [--count 1000] [--scale 10000]

Starts a real etcd on loopback (data dir on tmpfs when there is one, ephemeral ports,
killed by PID at the end) and, in this process, two nodes A and B (each a Cluster,
a Registry and a Multiplexer with its own etcd client). Measured, one registration
at a time:

- baseline: a single node's in-process registration (Registry.register → the route
  is selectable in that node's Router), the latency portmux has without etcd;
- across nodes: a worker registers on A (claimed with a create-if-absent txn) →
  B's Router selects the route (after B's watch delivered it);
- removal: the worker's connection ends on A → B's Router no longer selects it.

Then another node claims ``--scale`` routes (100 in flight) and B applies them from
its watch: the time until all are routable, the longest single apply on B's reactor,
and the across-nodes latency again with that many routes in the table. Prints
p50/p99 with the ratio to the baseline. Figures: docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from portmux.control._cluster import Cluster, registration_key
from portmux.control._etcd import EtcdClient
from portmux.control._registry import Registry
from portmux.core.mux import Multiplexer
from portmux.core.preamble import Preamble
from portmux.core.routing import Match
from portmux.targets.handoff import WorkerGroupTarget
from portmux.targets.proxy import ProxyTarget
from tests.cluster.harness import Etcd, Processes

PREFIX = "/portmux-bench/"


@dataclass(eq=False)
class Owner:
    pid: int
    uid: int = 1000
    gid: int = 1000
    label: str = "bench worker"


class Node:
    """One in-process node; ``changed`` fires after each swap of its registered routes."""

    def __init__(self, name: str, url: str) -> None:
        self.mux = Multiplexer(reactor)
        self.mux.startFactory()
        self.cluster = Cluster(reactor, EtcdClient(reactor, [url]), self.mux, prefix=PREFIX, node=name, lease_ttl=5)
        self.registry = Registry(self.mux, (), WorkerGroupTarget, lambda e: ProxyTarget([e]))
        self.waiter: tuple[Any, Deferred[float]] | None = None
        self.apply_ms: list[float] = []
        for method in ("add_registered_route", "remove_registered_route"):
            self._watch_changes(method)
        events = self.cluster._on_events

        def timed(batch: Any, revision: int) -> None:
            started = time.perf_counter()
            events(batch, revision)
            self.apply_ms.append((time.perf_counter() - started) * 1000)

        self.cluster._on_events = timed  # type: ignore[method-assign]
        self.cluster.startService()

    def _watch_changes(self, name: str) -> None:
        """After each change of the multiplexer's registered routes, check the waiter."""
        original = getattr(self.mux, name)

        def changed(route: Any) -> None:
            original(route)
            if self.waiter is not None and self.waiter[0]():
                _, done = self.waiter
                self.waiter = None
                done.callback(time.perf_counter())

        setattr(self.mux, name, changed)

    def until(self, predicate: Any) -> Deferred[float]:
        done: Deferred[float] = Deferred()
        if predicate():
            done.callback(time.perf_counter())
        else:
            self.waiter = (predicate, done)
        return done

    def routes(self, host: str) -> bool:
        route = self.mux.router.select(Preamble("http", host=host, path="/"))
        return route is not None and route.match.host == host


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, values: list[float], baseline: list[float] | None) -> str:
    p50, p99 = pct(values, 0.5), pct(values, 0.99)
    ratio = ""
    if baseline:
        ratio = f"  ×{p50 / pct(baseline, 0.5):7.1f} / ×{p99 / pct(baseline, 0.99):7.1f}"
    return f"{name:<52} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms{ratio}"


async def pause() -> None:
    await deferLater(reactor, 0.001, lambda: None)


async def bench(url: str, count: int, scale: int) -> None:
    # Baseline: one node, no etcd.
    single = Multiplexer(reactor)
    single.startFactory()
    alone = Registry(single, (), WorkerGroupTarget, lambda e: ProxyTarget([e]))
    baseline = []
    for i in range(count):
        started = time.perf_counter()
        alone.register(Owner(i), Match(protocol="http", host=f"s{i}.test").canonical(), "proxy", "tcp:127.0.0.1:1")
        route = single.router.select(Preamble("http", host=f"s{i}.test", path="/"))
        baseline.append((time.perf_counter() - started) * 1000)
        assert route is not None

    a, b = Node("a", url), Node("b", url)
    while a.cluster.health.stale or b.cluster.health.stale:
        await pause()

    async def across(tag: str, n: int) -> tuple[list[float], list[float], list[float]]:
        claim, routable, removal = [], [], []
        owners = []
        for i in range(n):
            host = f"{tag}{i}.test"
            owner = Owner(i)
            owners.append(owner)
            started = time.perf_counter()
            seen = b.until(lambda host=host: b.routes(host))
            await a.cluster.register(a.registry, owner, Match(protocol="http", host=host).canonical(), "proxy",
                                     "tcp:127.0.0.1:1", "tcp:127.0.0.2:9001")
            claim.append((time.perf_counter() - started) * 1000)
            routable.append((await seen - started) * 1000)
        for i, owner in enumerate(owners):
            host = f"{tag}{i}.test"
            started = time.perf_counter()
            gone = b.until(lambda host=host: not b.routes(host))
            a.cluster.released(a.registry, owner, a.registry.unregister_all(owner))
            removal.append((await gone - started) * 1000)
        return claim, routable, removal

    claim, routable, removal = await across("x", count)

    # Scale: another node claims `scale` routes; B applies each from its watch.
    other = EtcdClient(reactor, [url], timeout=10.0)
    lease = await other.grant(600)
    b.apply_ms.clear()

    async def claim_one(i: int) -> None:
        match = Match(protocol="http", host=f"c{i}.test").canonical()
        value = json.dumps({"match": match.to_keys(), "mode": "proxy", "uid": 1000, "node": "c", "pid": i,
                            "advertise": ["tcp:127.0.0.4:9001"]}).encode()
        await other.create(registration_key(PREFIX.encode(), match), value, lease)

    started = time.perf_counter()
    all_there = b.until(lambda: len(b.cluster.remote) >= scale)
    for first in range(0, scale, 100):
        await gatherResults([Deferred.fromCoroutine(claim_one(i)) for i in range(first, min(first + 100, scale))])
    loaded = await all_there - started
    apply_ms = list(b.apply_ms)
    assert b.routes("c0.test") and b.routes(f"c{scale - 1}.test")
    sample = max(count // 10, 10)
    _, routable_big, removal_big = await across("y", sample)
    # The same-size baseline: one node (no etcd) whose table already holds `scale` routes.
    for i in range(count, scale):
        alone.register(Owner(i), Match(protocol="http", host=f"s{i}.test").canonical(), "proxy", "tcp:127.0.0.1:1")
    baseline_big, removal_baseline_big = [], []
    owners = [Owner(scale + i) for i in range(sample)]
    for i, owner in enumerate(owners):
        started = time.perf_counter()
        alone.register(owner, Match(protocol="http", host=f"z{i}.test").canonical(), "proxy", "tcp:127.0.0.1:1")
        assert single.router.select(Preamble("http", host=f"z{i}.test", path="/")) is not None
        baseline_big.append((time.perf_counter() - started) * 1000)
    for owner in owners:
        started = time.perf_counter()
        alone.unregister_all(owner)
        removal_baseline_big.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    emptied = b.until(lambda: not b.cluster.remote)
    await other.revoke(lease)
    unloaded = await emptied - started

    print(f"etcd {url} (data on tmpfs if available); nodes A and B in one process; loopback")
    print(row(f"baseline: single-node registration → routable (n={count})", baseline, None))
    print(row("across nodes: register on A → claim answered", claim, baseline))
    print(row("across nodes: register on A → routable on B", routable, baseline))
    print(row("across nodes: worker gone on A → unroutable on B", removal, baseline))
    print(f"{scale} routes claimed by a third node, 100 in flight: all routable on B after {loaded:.2f} s; "
          f"B's longest watch-message apply {max(apply_ms):.2f} ms (p99 {pct(apply_ms, 0.99):.2f} ms, "
          f"{len(apply_ms)} messages); lease revoked → all gone on B after {unloaded * 1000:.0f} ms; "
          f"B re-read the table {b.cluster.health.full_reads} time(s)")
    print(row(f"baseline: single node holding {scale} routes: registration → routable (n={sample})",
              baseline_big, None))
    print(row(f"baseline: single node holding {scale} routes: worker gone → unroutable", removal_baseline_big,
              None))
    print(row(f"B holding {scale} routes: register on A → routable on B (n={sample})", routable_big, baseline_big))
    print(row(f"B holding {scale} routes: worker gone on A → unroutable on B", removal_big, removal_baseline_big))
    print(f"goal p99 < 50 ms: across nodes p99 {pct(routable, 0.99):.1f} ms, "
          f"removal p99 {pct(removal, 0.99):.1f} ms, at {scale}: {pct(routable_big, 0.99):.1f} ms")
    for node in (a, b):
        node.cluster.stopService()
    await other.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--scale", type=int, default=10000)
    options = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="portmux-etcd-bench-"))
    processes = Processes(tmp)
    etcd = Etcd(processes, tmp)
    failed: list[Any] = []
    try:
        etcd.start()

        def run() -> None:
            d = Deferred.fromCoroutine(bench(etcd.url, options.count, options.scale))
            d.addErrback(failed.append)
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(run)
        reactor.run()
    finally:
        processes.stop()
    if failed:
        failed[0].printTraceback(file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
