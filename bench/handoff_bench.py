"""Handoff vs direct connection, same run, loopback only, bounded loops.

    python bench/handoff_bench.py [--pings 20000] [--megabytes 512] [--connections 500]

Starts portmux (Multiplexer + control socket) and one worker as child processes.
The worker serves the same protocol on its own direct port and, by socket handoff,
as TCPMUX service ``bench`` on portmux's port. The client measures both paths:
request/response ping-pong on one persistent connection, bulk upload MB/s, and
connect-to-first-answer latency (p50/p99). Figures: docs/workers.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

SERVICE = b"bench"


# -- child roles ---------------------------------------------------------------

def pin(cpu: int) -> None:
    """Pin this process to ``cpu`` on a multi-core machine: stable placement, stable figures."""
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def run_mux(control: str) -> None:
    from twisted.internet import reactor

    from portmux.control import ControlFactory
    from portmux.mux import Multiplexer

    mux = Multiplexer(reactor, [])
    ControlFactory_ = ControlFactory(reactor, mux)
    reactor.listenUNIX(control, ControlFactory_)  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, mux, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def run_worker(control: str) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from portmux.worker import Worker

    class Bench(Protocol):
        """'P' then echo everything; 'B' + 8-byte length: swallow that many bytes, answer 'k'."""

        mode = b""
        remaining = 0

        def dataReceived(self, data: bytes) -> None:
            if not self.mode:
                self.mode, data = data[:1], data[1:]
                if self.mode == b"B":
                    self.header = b""
            if self.mode == b"P":
                self.transport.write(data)  # type: ignore[union-attr]
                return
            if not hasattr(self, "counted"):
                self.header += data
                if len(self.header) < 8:
                    return
                self.remaining = struct.unpack("!Q", self.header[:8])[0]
                data = self.header[8:]
                self.counted = True
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.transport.write(b"k")  # type: ignore[union-attr]

    factory = Factory.forProtocol(Bench)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    worker = Worker(reactor, f"unix:{control}", factory)

    async def go() -> None:
        await worker.connect()
        await worker.register({"kind": "tcpmux", "service": SERVICE.decode()})
        print(port.getHost().port, flush=True)

    from twisted.internet.defer import Deferred

    Deferred.fromCoroutine(go())
    reactor.run()  # type: ignore[attr-defined]


# -- client ----------------------------------------------------------------------

def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def open_connection(port: int, via_portmux: bool, mode: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if via_portmux:
        sock.sendall(SERVICE + b"\r\n" + mode)
        if recv_exact(sock, 3) != b"+\r\n":
            raise ConnectionError("portmux did not accept")
    else:
        sock.sendall(mode)
    return sock


def ping_pong(port: int, via: bool, count: int, size: int = 64) -> float:
    """Round trips per second on one persistent connection."""
    sock = open_connection(port, via, b"P")
    message = b"x" * size
    start = time.perf_counter()
    for _ in range(count):
        sock.sendall(message)
        recv_exact(sock, size)
    elapsed = time.perf_counter() - start
    sock.close()
    return count / elapsed


def bulk(port: int, via: bool, megabytes: int) -> float:
    """Upload MB/s until the server confirms every byte."""
    total = megabytes << 20
    sock = open_connection(port, via, b"B")
    block = b"\0" * (1 << 20)
    start = time.perf_counter()
    sock.sendall(struct.pack("!Q", total))
    for _ in range(megabytes):
        sock.sendall(block)
    recv_exact(sock, 1)
    elapsed = time.perf_counter() - start
    sock.close()
    return megabytes / elapsed


def setup_latency(port: int, via: bool, count: int) -> list[float]:
    """Seconds from connect() to the first echoed byte, per connection."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sock = open_connection(port, via, b"P")
        sock.sendall(b"!")
        recv_exact(sock, 1)
        samples.append(time.perf_counter() - start)
        sock.close()
    return samples


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("client", "mux", "worker"), default="client")
    parser.add_argument("--control")
    parser.add_argument("--pings", type=int, default=20000)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.role == "mux":
        pin(1)  # idle once a connection is handed off
        run_mux(args.control)
        return 0
    if args.role == "worker":
        pin(1)  # the server side, on its own core as in bench/run.py
        run_worker(args.control)
        return 0
    pin(0)

    directory = tempfile.mkdtemp(prefix="pmxbench")
    control = os.path.join(directory, "control.sock")
    children: list[subprocess.Popen[bytes]] = []
    try:
        def child(role: str) -> int:
            proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--control", control],
                                    stdout=subprocess.PIPE)
            children.append(proc)
            assert proc.stdout is not None
            return int(proc.stdout.readline())

        mux_port = child("mux")
        direct_port = child("worker")
        results: dict[str, dict[str, Any]] = {"direct": {}, "handoff": {}}
        for _ in range(args.rounds):
            for name, port, via in (("direct", direct_port, False), ("handoff", mux_port, True)):
                r = results[name]
                r.setdefault("pings", []).append(ping_pong(port, via, args.pings))
                r.setdefault("bulk", []).append(bulk(port, via, args.megabytes))
                r.setdefault("setup", []).extend(setup_latency(port, via, args.connections))
        print(f"{'path':<8} {'ping-pong/s':>12} {'bulk MB/s':>10} {'setup p50 ms':>13} {'setup p99 ms':>13}")
        summary = {}
        for name, r in results.items():
            summary[name] = (statistics.median(r["pings"]), statistics.median(r["bulk"]),
                             percentile(r["setup"], 0.5) * 1e3, percentile(r["setup"], 0.99) * 1e3)
            print(f"{name:<8} {summary[name][0]:>12.0f} {summary[name][1]:>10.0f} "
                  f"{summary[name][2]:>13.3f} {summary[name][3]:>13.3f}")
        d, h = summary["direct"], summary["handoff"]
        print(f"handoff/direct: ping-pong {h[0] / d[0]:.3f}, bulk {h[1] / d[1]:.3f}; "
              f"setup added p50 {h[2] - d[2]:.3f} ms, p99 {h[3] - d[3]:.3f} ms "
              f"({args.rounds} rounds, medians; {args.connections * args.rounds} connections per path)")
    finally:
        for proc in children:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        shutil.rmtree(directory, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
