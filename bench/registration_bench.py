"""Worker registration at scale: latency per registration and reactor stalls, with the old cost.

    python bench/registration_bench.py [--routes 10000] [--connections 10]

This process runs portmux's Multiplexer and control socket on one reactor, with a
5 ms LoopingCall measuring how late the reactor runs it (its longest stall). A child
process opens ``--connections`` real control connections and registers ``--routes``
distinct routes (HTTP host/path, TCPMUX names, net.tcp Via addresses) one at a time,
timing each request until its ``registered`` reply. As the daemon does at startup, the
objects built before the run are frozen (portmux.daemon._gc), so a full collection walks
what the registrations added: the bench counts those GC-tracked objects per route, by
type (``--types`` lists them). The baseline, measured in the same
run, is what every registration cost before issue 11: sorting the whole registered
table and building a new Router over it (``Router(registered + static)``), timed at
the table sizes the run passes through. Loopback/UNIX sockets only; loops are bounded.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def match_for(index: int) -> dict[str, str]:
    """The index-th registration: a mix of the three address families workers use."""
    family = index % 4
    if family == 0:
        return {"protocol": "tcpmux", "service": f"svc{index}/{1 + index % 3}"}
    if family == 1:
        return {"protocol": "nmf", "via": f"net.tcp://host{index % 50}.example/app{index}/"}
    return {"protocol": "http", "host": f"h{index % 200}.example", "path": f"/api/{index}"}


# -- the client child ------------------------------------------------------------


def client(path: str, routes: int, connections: int) -> None:
    """Register ``routes`` routes over ``connections`` connections; print latencies (ms) as JSON."""
    from portmux.control import _framing as pc

    socks, decoders = [], []
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(path)
        socks.append(sock)
        decoders.append(pc.FrameDecoder())

    def request(n: int, message: dict[str, Any]) -> dict[str, Any]:
        sock, decoder = socks[n], decoders[n]
        sock.sendall(pc.encode(message))
        while True:
            for reply in decoder.feed(sock.recv(65536)):
                if reply.get("id") == message["id"]:
                    return reply

    for n in range(connections):
        request(n, {"op": "hello", "id": 0, "version": 2})
    latencies = []
    for index in range(routes):
        message = {"op": "register", "id": index + 1, "match": match_for(index), "mode": "handoff"}
        start = time.perf_counter()
        reply = request(index % connections, message)
        latencies.append((time.perf_counter() - start) * 1000)
        if reply["op"] != "registered":
            raise SystemExit(f"registration {index} refused: {reply}")
    print(json.dumps(latencies), flush=True)
    sys.stdin.read()  # keep the registrations until the parent is done


# -- the server (this process) -----------------------------------------------------


def baseline(routes: list[Any], static: list[Any], sizes: list[int], repeat: int = 3) -> dict[int, float]:
    """ms for the old per-registration work at each table size: sort, then a whole new Router."""
    from portmux.core.registered import specificity
    from portmux.core.routing import Router

    costs = {}
    for size in sizes:
        table = routes[:size]
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            ordered = sorted(table, key=lambda route: specificity(route.match))
            Router(ordered + static)
            best = min(best, time.perf_counter() - start)
        costs[size] = best * 1000
    return costs


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--types", action="store_true", help="list the tracked objects per route by type")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client[0], int(args.client[1]), int(args.client[2]))
        return
    if not 1 <= args.routes <= 100_000 or not 1 <= args.connections <= 1000:
        raise SystemExit("--routes must be 1..100000 and --connections 1..1000")

    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall
    from twisted.internet.threads import blockingCallFromThread, deferToThread
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from portmux.control._server import ControlFactory
    from portmux.core.mux import Multiplexer
    from portmux.daemon._gc import freeze_startup_objects
    from portmux.targets.echo import EchoFactory

    directory = tempfile.mkdtemp(prefix="pmx-bench")
    log_file = open(os.path.join(directory, "portmux.log"), "w", encoding="utf-8")  # noqa: SIM115
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
    mux = Multiplexer(reactor, [])
    mux.add_route(EchoFactory(), name="static-echo", protocol="tcpmux", service="echo")
    mux.add_route(EchoFactory(), name="static-web", protocol="http", host="*", path="/")
    path = os.path.join(directory, "control.sock")
    per_connection = -(-args.routes // args.connections)
    factory = ControlFactory(reactor, mux, max_registrations=per_connection)
    reactor.listenUNIX(path, factory)  # type: ignore[attr-defined]

    result: dict[str, Any] = {}
    stalls = {"max": 0.0, "expected": 0.0, "max_without_gc": 0.0, "gc_max": 0.0, "gc_cpu_max": 0.0}
    collections = {"full": 0, "seen": 0, "started": 0.0, "cpu_started": 0.0}
    tick = 0.005

    def collected(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            collections["started"] = time.perf_counter()
            collections["cpu_started"] = time.thread_time()
        else:
            collections["full"] += 1
            if "done" not in result:
                stalls["gc_max"] = max(stalls["gc_max"], time.perf_counter() - collections["started"])
                stalls["gc_cpu_max"] = max(stalls["gc_cpu_max"], time.thread_time() - collections["cpu_started"])

    gc.callbacks.append(collected)

    def beat() -> None:
        now = time.perf_counter()
        if stalls["expected"] and "done" not in result:
            late = now - stalls["expected"]
            stalls["max"] = max(stalls["max"], late)
            if collections["full"] == collections["seen"]:
                stalls["max_without_gc"] = max(stalls["max_without_gc"], late)
        collections["seen"] = collections["full"]
        stalls["expected"] = now + tick

    LoopingCall(beat).start(tick)

    def tracked() -> Counter[str]:
        """GC-tracked objects by type, after a collection (not counted as a stall: the run is over)."""
        gc.collect()
        return Counter(type(thing).__name__ for thing in gc.get_objects())

    def timed_full_collection() -> tuple[float, float]:
        """ms of one full collection over the routes now registered: best of 5, wall and CPU."""
        wall = cpu = float("inf")
        for _ in range(5):
            started, cpu_started = time.perf_counter(), time.thread_time()
            gc.collect()
            wall = min(wall, time.perf_counter() - started)
            cpu = min(cpu, time.thread_time() - cpu_started)
        return wall * 1000, cpu * 1000

    def start() -> None:
        freeze_startup_objects()  # as portmux.daemon.service does once the listeners are up
        result["before"] = tracked()
        deferToThread(run_client).addCallbacks(finished, failed)

    def run_client() -> None:
        child = subprocess.Popen(
            [sys.executable, __file__, "--client", path, str(args.routes), str(args.connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        result["latencies"] = json.loads(line) if line else []
        result["routes"] = mux.router.registered.routes()  # an immutable snapshot, safe off the reactor
        result["done"] = True  # teardown (10,000 unregistrations) is not part of the figures
        result["after"] = blockingCallFromThread(reactor, tracked)
        result["full_ms"] = blockingCallFromThread(reactor, timed_full_collection)
        child.stdin.close()
        child.wait(30)

    def finished(_: object) -> None:
        reactor.stop()  # type: ignore[attr-defined]

    def failed(failure: Any) -> None:
        result["error"] = failure.getErrorMessage()
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    log_file.close()
    shutil.rmtree(directory, ignore_errors=True)
    if "error" in result or not result.get("latencies"):
        raise SystemExit(f"bench failed: {result.get('error', 'no latencies')}")

    latencies = result["latencies"]
    from portmux.control._keys import parse_match
    from portmux.control._registry import route_name

    registered = {route.name: route for route in result["routes"]}
    routes = [registered[route_name("handoff", parse_match(match_for(i)))] for i in range(args.routes)]
    static = list(mux.static_routes)
    sizes = sorted({max(1, args.routes * k // 10) for k in range(1, 11)})
    old = baseline(routes, static, sizes)
    # The old total: every registration rebuilt the table as it stood (interpolated between sizes).
    old_total = 0.0
    previous_size, previous_cost = 0, 0.0
    for size in sizes:
        cost = old[size]
        old_total += (size - previous_size) * (cost + previous_cost) / 2 / 1000
        previous_size, previous_cost = size, cost
    new_total = sum(latencies) / 1000
    p50, p99, worst = (percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies))
    final = old[sizes[-1]]
    print(f"registered routes            {len(routes)} over {args.connections} connections")
    print(f"registration latency (ms)    p50 {p50:.2f}  p99 {p99:.2f}  max {worst:.2f}   (goal: p99 < 5)")
    print(f"longest reactor stall (ms)   {stalls['max'] * 1000:.1f}   (goal: < 50); "
          f"{stalls['max_without_gc'] * 1000:.1f} outside CPython full (gen 2) collections")
    added = result["after"] - result["before"]
    print(f"longest full collection (ms) {stalls['gc_max'] * 1000:.1f}   ({stalls['gc_cpu_max'] * 1000:.1f} of it CPU; "
          f"{collections['full']} during the run)")
    print(f"one full collection (ms)     {result['full_ms'][0]:.1f}   ({result['full_ms'][1]:.1f} CPU; best of 5 after the run, over "
          f"{sum(result['after'].values())} tracked objects; {gc.get_freeze_count()} frozen at startup)")
    print(f"GC-tracked objects per route {sum(added.values()) / args.routes:.2f}")
    if args.types:
        for name, count in added.most_common(12):
            print(f"  {name:28s} {count / args.routes:6.2f}")
    print(f"all registrations (s)        {new_total:.2f}")
    print(f"baseline: old rebuild per registration at {sizes[-1]} routes: {final:.1f} ms "
          f"(p99 ratio old/new {final / p99:.0f}x); every rebuild 0..{sizes[-1]} would take {old_total:.1f} s "
          f"({old_total / new_total:.0f}x the whole run)")
    for size in sizes:
        print(f"  old rebuild at {size:6d} routes: {old[size]:7.2f} ms")


if __name__ == "__main__":
    main()
