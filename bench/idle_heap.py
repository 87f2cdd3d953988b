# -*- test-case-name: tests.targets.test_connection_garbage -*-
"""Python heap per idle proxied connection, and cyclic garbage per closed one.

    PYTHONPATH=TREE python bench/idle_heap.py [--count 500] [--tls]

In one process: a Multiplexer proxying ``http`` to a backend that accepts and holds
(plain sockets in a thread, excluded from the count), N clients each sending one
request. Prints tracemalloc bytes per held pair, Python calls per client read once
the pair is established, then closes every pair with the collector disabled and
prints how many objects ``gc.collect()`` finds per closed connection. ``--tls``
terminates TLS in front (the clients' own ssl objects then count in the heap
figure, and they close without close_notify). Run it with PYTHONPATH naming each
tree in turn for a before/after.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import ssl
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

REQUEST = b"GET /echo HTTP/1.1\r\nHost: bench\r\n\r\n"


def _backend(listener: socket.socket, held: list[socket.socket], stop: threading.Event) -> None:
    """Accept and hold every connection; never answer (the pairs stay idle)."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        held.append(conn)


def _spin(reactor: Any, until: Callable[[], bool], seconds: float) -> bool:
    """Run the reactor until ``until()`` (True) or ``seconds`` pass (its last answer)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reactor.iterate(0.005)
        if until():
            return True
    return until()


def _handshake(reactor: Any, context: Any, raw: socket.socket) -> Any:
    """A TLS client handshake on ``raw`` while the reactor serves the other side."""

    conn = context.wrap_socket(raw, server_hostname="bench.test", do_handshake_on_connect=False)
    conn.setblocking(False)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.do_handshake()
            break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if time.monotonic() > deadline:
                raise
            reactor.iterate(0.001)
    conn.setblocking(True)
    return conn


def churn_gc(reactor: Any, open_clients: Any, wait_pairs: Any, held: list[socket.socket],
             counters: Any, count: int) -> None:
    """Open and close ``count`` pairs in batches with the collector on: its time per connection."""
    spent = 0.0
    runs = 0
    started = [0.0]

    def timing(phase: str, info: dict[str, Any]) -> None:
        nonlocal spent, runs
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent += time.perf_counter() - started[0]
            runs += 1

    gc.collect()
    gc.callbacks.append(timing)
    batch = 100
    for _ in range(max(1, count // batch)):
        clients = open_clients(batch)
        wait_pairs(batch)
        for c in clients:
            c.close()
        for c in held:
            c.close()
        held.clear()
        _spin(reactor, lambda: counters.active == 0, 20)
    gc.callbacks.remove(timing)
    done = max(1, count // batch) * batch
    print(f"collector time while {done} connections opened and closed: {spent / done * 1e6:.1f} us"
          f" per connection ({runs} collections)")


def main(argv: list[str] | None = None) -> int:
    """Measure, print, exit (the reactor is not stopped cleanly: os._exit)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--tls", action="store_true", help="terminate TLS in front (trustme certificate)")
    parser.add_argument("--no-relay", action="store_true",
                        help="copy through Twisted transports, not the relay (targets/_relay.py)")
    args = parser.parse_args(argv)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    from portmux.core.mux import Multiplexer
    from portmux.targets.proxy import ProxyTarget

    back = socket.socket()
    back.bind(("127.0.0.1", 0))
    back.listen(4096)
    held: list[socket.socket] = []
    stop = threading.Event()
    thread = threading.Thread(target=_backend, args=(back, held, stop), daemon=True)
    thread.start()
    mux = Multiplexer(reactor)
    target = ProxyTarget(reactor, [f"tcp:127.0.0.1:{back.getsockname()[1]}"])
    if getattr(args, "no_relay", False):
        target.relay = False
    target.splice_after = None
    client_context = None
    route_target: Any = target
    if args.tls:
        import tempfile
        from pathlib import Path

        import trustme

        from portmux.core.routing import Match, Route
        from portmux.targets.tls import TLSTarget
        from portmux.tls import CertificateStore

        ca = trustme.CA()
        directory = Path(tempfile.mkdtemp(prefix="idle-heap-"))
        ca.issue_cert("bench.test").private_key_and_cert_chain_pem.write_to_path(
            str(directory / "bench.pem"))
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        route_target = TLSTarget(reactor, CertificateStore([directory]),
                                 [Route("http", Match(protocol="http"), target)])
    mux.add_route(route_target, name="front" if args.tls else "http", protocol="tls" if args.tls else "http")
    port = reactor.listenTCP(0, mux, backlog=4096, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    try:
        from portmux._twisted import lean_dispatch

        lean_dispatch(reactor)
    except ImportError:
        pass
    counters = (route_target.inner if args.tls else mux).stats.for_route("http")

    def open_clients(n: int) -> list[Any]:
        clients: list[Any] = []
        for _ in range(n):
            c: Any = socket.create_connection(address)
            if client_context is not None:
                c = _handshake(reactor, client_context, c)
            c.sendall(REQUEST)
            clients.append(c)
            if len(clients) % 200 == 0:
                _spin(reactor, lambda: False, 0.02)
        return clients

    def wait_pairs(n: int) -> None:
        if not _spin(reactor, lambda: counters.active >= n and len(held) >= n, 20):
            raise SystemExit(f"only {counters.active} pairs, {len(held)} at the backend")
        _spin(reactor, lambda: False, 0.2)

    # warm up: one round of connections opened and closed
    warm = open_clients(50)
    wait_pairs(50)
    for c in warm:
        c.close()
    _spin(reactor, lambda: counters.active == 0, 10)
    for c in held:
        c.close()
    held.clear()
    gc.collect()

    tracemalloc.start(1)
    here = tracemalloc.Filter(False, __file__)
    before = tracemalloc.take_snapshot().filter_traces([here])
    clients = open_clients(args.count)
    wait_pairs(args.count)
    after = tracemalloc.take_snapshot().filter_traces([here])
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"heap per idle proxied connection: {grown / args.count:,.0f} bytes ({args.count} held)")
    top = after.compare_to(before, "lineno")[:int(os.environ.get("IDLE_HEAP_TOP", "8"))]
    for stat in top:
        print(f"   {stat.size_diff / args.count:7.0f} B  {stat.traceback}", file=sys.stderr)

    # Python calls per client read on an established pair
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    rounds = 50
    for c in clients[:rounds]:
        c.sendall(b"x")
    _spin(reactor, lambda: False, 0.05)  # settle the reactor's own state
    for c in clients[rounds:2 * rounds]:
        c.sendall(b"x")
    time.sleep(0.05)
    sys.setprofile(profile)
    reactor.iterate(0)
    sys.setprofile(None)
    print(f"Python calls per client read (whole reactor turn / {rounds} reads): {calls / rounds:.2f}")

    # close everything with the collector off; count what only the collector frees
    _spin(reactor, lambda: False, 0.1)
    gc.collect()
    gc.disable()
    for c in clients:
        c.close()
    for c in held:
        c.close()
    if not _spin(reactor, lambda: counters.active == 0, 20):
        raise SystemExit(f"{counters.active} pairs still open")
    _spin(reactor, lambda: False, 0.1)
    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds: dict[str, int] = {}
    for obj in gc.garbage:
        name = type(obj).__qualname__
        kinds[name] = kinds.get(name, 0) + 1
    gc.set_debug(0)
    gc.garbage.clear()
    gc.enable()
    print(f"cyclic garbage per closed connection: {found / args.count:.2f} objects ({found} total)")
    for name, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:12]:
        print(f"   {n / args.count:6.2f}  {name}", file=sys.stderr)
    churn_gc(reactor, open_clients, wait_pairs, held, counters, args.count)
    stop.set()
    back.close()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
