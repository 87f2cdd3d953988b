"""Handoff vs direct connection, same run, C load client, loopback only, bounded loops.

    python bench/handoff_bench.py [--rounds 5] [--seconds 3] [--megabytes 1024] [--lat-count 2000]

Starts portmux (Multiplexer + control socket) and one worker as child processes.
The worker serves one Twisted protocol with bench/src/backend.c's semantics
(``GET /echo``: echo everything, the request included; ``GET /sink?n=N``: swallow
N bytes, answer ``K``; any other request: a short HTTP response, then close) on its
own direct port and, by socket handoff, as HTTP route host ``bench`` path ``/`` on
portmux's port. The compiled load client (bench/src/client.c) measures both paths,
interleaved round by round: 64-byte ping-pong on 1 and on 16 persistent connections,
bulk upload MB/s, and connect-to-first-byte latency p50/p99. Pinned: client CPU 0,
worker and portmux CPU 1. Figures: docs/workers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "bench"  # the Host header bench/src/client.c sends
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
            b"Connection: close\r\n\r\nhello world\n")
MAX_HEAD = 8192


# -- child roles ---------------------------------------------------------------

def pin(cpu: int) -> None:
    """Pin this process to ``cpu`` on a multi-core machine: stable placement, stable figures."""
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mux(control: str) -> None:
    from twisted.internet import reactor as installed

    from portmux.control._server import ControlFactory
    from portmux.core.mux import Multiplexer

    reactor: Any = installed
    mux = Multiplexer(reactor, [])
    reactor.listenUNIX(control, ControlFactory(reactor, mux))
    port = reactor.listenTCP(0, mux, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def socket_options(transport: Any) -> dict[str, int]:
    """The options that could make an adopted socket behave unlike an accepted one."""
    sock = transport.getHandle()
    return {
        "TCP_NODELAY": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "SO_SNDBUF": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "SO_RCVBUF": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "O_NONBLOCK": int(not sock.getblocking()),
    }


def run_worker(control: str, report: str, nodelay: bool) -> None:
    from twisted.internet import reactor as installed
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol

    from portmux.worker._library import Worker

    reactor: Any = installed
    seen: dict[str, dict[str, int]] = {}

    class Bench(Protocol):
        """backend.c's semantics: the first request head picks echo, sink-N-then-'K' or a response."""

        transport: Any

        def __init__(self) -> None:
            self.mode = "head"
            self.head = b""
            self.remaining = 0

        def connectionMade(self) -> None:
            path = "handoff" if hasattr(self, "portmux_handoff") else "direct"
            if path not in seen:  # as the socket arrives, before we touch it
                seen[path] = socket_options(self.transport)
                with open(report, "w") as f:
                    json.dump(seen, f)
            if nodelay:
                self.transport.setTcpNoDelay(True)

        def dataReceived(self, data: bytes) -> None:
            if self.mode == "echo":
                self.transport.write(data)
                return
            if self.mode == "sink":
                self.remaining -= len(data)
                if self.remaining <= 0:
                    self.transport.write(b"K")
                    self.mode, self.head = "head", b""
                return
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    self.transport.loseConnection()
                return
            if self.head.startswith(b"GET /echo"):
                self.mode = "echo"
                self.transport.write(self.head)
            elif self.head.startswith(b"GET /sink?n="):
                digits = self.head[12:end].split(b" ", 1)[0].split(b"&", 1)[0]
                self.remaining = int(digits) - (len(self.head) - end - 4) if digits.isdigit() else 0
                self.mode = "sink"
                self.dataReceived(b"")
            else:
                self.transport.write(RESPONSE)
                self.transport.loseConnection()

    factory = Factory.forProtocol(Bench)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
    worker = Worker(reactor, f"unix:{control}", factory)

    async def go() -> None:
        await worker.connect()
        await worker.register({"protocol": "http", "host": HOST, "path": "/"}, mode="handoff")
        print(port.getHost().port, flush=True)

    Deferred.fromCoroutine(go())
    reactor.run()


# -- orchestration ---------------------------------------------------------------

def build(workdir: str) -> str:
    """Compile bench/src/client.c with -O2 into ``workdir``; returns the binary's path."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("bench/handoff_bench.py needs a C compiler (gcc) for its load client")
    binary = os.path.join(workdir, "client")
    subprocess.run([cc, "-O2", "-o", binary, str(HERE / "src" / "client.c")], check=True)
    return binary


def socket_count(pid: int) -> int:
    """How many socket descriptors ``pid`` holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def load(client: str, mode: str, port: int, amount: int, seconds: float,
         midway: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the C client once (pinned like this process: CPU 0); its JSON result.

    ``midway`` is called once, half-way through the run's time limit, if the run lasts that long.
    """
    argv = [client, mode, str(port), str(amount), str(seconds)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # inherits CPU 0 from us
    try:
        if midway is not None:
            try:
                proc.wait(seconds / 2)
            except subprocess.TimeoutExpired:
                midway()
        out, _ = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def spread(values: list[float]) -> str:
    """``median (min–max)`` with three decimals."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--role", choices=("client", "mux", "worker"), default="client")
    parser.add_argument("--control")
    parser.add_argument("--report")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per ping-pong run")
    parser.add_argument("--megabytes", type=int, default=1024, help="per bulk run")
    parser.add_argument("--lat-count", type=int, default=2000, help="connections per latency run")
    parser.add_argument("--no-server-nodelay", action="store_true",
                        help="leave TCP_NODELAY unset on the worker's sockets (backend.c sets it)")
    args = parser.parse_args()
    if args.role == "mux":
        pin(1)  # idle once a connection is handed off
        run_mux(args.control)
        return 0
    if args.role == "worker":
        pin(1)  # the server side, on its own core as in bench/run.py
        run_worker(args.control, args.report, not args.no_server_nodelay)
        return 0
    pin(0)
    if args.rounds < 1 or args.rounds > 50:
        sys.exit("--rounds must be 1..50")

    directory = tempfile.mkdtemp(prefix="pmxbench")
    control = os.path.join(directory, "control.sock")
    report = os.path.join(directory, "sockopts.json")
    children: list[subprocess.Popen[bytes]] = []
    try:
        client = build(directory)

        def child(role: str) -> int:
            argv = [sys.executable, __file__, "--role", role, "--control", control, "--report", report]
            if args.no_server_nodelay:
                argv.append("--no-server-nodelay")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            children.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{role} exited before printing its port")
            return int(line)

        mux_port = child("mux")
        direct_port = child("worker")
        mux_pid = children[0].pid
        paths = {"direct": direct_port, "handoff": mux_port}
        total = args.megabytes << 20
        tests: list[tuple[str, str, int, float, str]] = [
            ("pp1", "pp", 1, args.seconds, "per_s"),
            ("pp16", "pp", 16, args.seconds, "per_s"),
            ("bulk", "bulk", total, max(30.0, args.megabytes / 20), "mb_s"),
            ("lat_p50", "lat", args.lat_count, 30.0, "p50_us"),
        ]
        values: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
        ratios: dict[str, list[float]] = {}
        mux_steady_cpu = 0.0
        held: list[int] = []  # portmux's extra sockets during handoff pp16
        for rnd in range(args.rounds):
            order = ["direct", "handoff"] if rnd % 2 == 0 else ["handoff", "direct"]
            for name, mode, amount, seconds, key in tests:
                got: dict[str, dict[str, Any]] = {}
                for path in order:
                    before = cpu_seconds(mux_pid)
                    midway: Callable[[], None] | None = None
                    if path == "handoff" and name == "pp16":
                        baseline = socket_count(mux_pid)

                        def midway_check(base: int = baseline) -> None:
                            held.append(socket_count(mux_pid) - base)

                        midway = midway_check
                    got[path] = load(client, mode, paths[path], amount, seconds, midway)
                    if path == "handoff" and mode in ("pp", "bulk"):
                        mux_steady_cpu += cpu_seconds(mux_pid) - before
                    if mode == "bulk" and not got[path].get("complete"):
                        raise RuntimeError(f"bulk via {path} did not complete: {got[path]}")
                    if got[path].get("errors"):
                        raise RuntimeError(f"{name} via {path}: {got[path]}")
                    values[path].setdefault(name, []).append(float(got[path][key]))
                    if mode == "lat":
                        values[path].setdefault("lat_p99", []).append(float(got[path]["p99_us"]))
                ratios.setdefault(name, []).append(got["handoff"][key] / got["direct"][key])
            print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
                f"{n} {ratios[n][-1]:.3f}" for n in ("pp1", "pp16", "bulk")), flush=True)

        print()
        print(f"{'metric':<26} {'direct':>12} {'handoff':>12}   handoff/direct median (min-max)")
        labels = {"pp1": "ping-pong/s, 1 conn", "pp16": "ping-pong/s, 16 conns",
                  "bulk": "bulk upload MB/s", "lat_p50": "connect+1st byte p50 us",
                  "lat_p99": "connect+1st byte p99 us"}
        for name, label in labels.items():
            d = statistics.median(values["direct"][name])
            h = statistics.median(values["handoff"][name])
            tail = spread(ratios[name]) if name in ratios else "-"
            print(f"{label:<26} {d:>12.1f} {h:>12.1f}   {tail}")
        for p in ("p50", "p99"):
            added = [h - d for d, h in zip(values["direct"][f"lat_{p}"], values["handoff"][f"lat_{p}"])]
            print(f"setup latency added by handoff, {p}: {statistics.median(added):.0f} us "
                  f"(per-round {min(added):.0f}-{max(added):.0f} us)")
        with open(report) as f:
            print("worker socket options as the socket arrives:", f.read())
        print(f"portmux CPU while handed-off connections ran pp/bulk: {mux_steady_cpu * 1e3:.0f} ms "
              f"in total (includes accepting and handing off those {18 * args.rounds} connections)")
        print(f"sockets portmux held beyond its idle set, midway through handoff pp16 runs: {held} "
              "(16 would mean it kept the handed-off connections)")
        verdict = []
        for name in ("pp1", "pp16", "bulk"):
            r = statistics.median(ratios[name])
            verdict.append(f"{name} {r:.3f} {'ok' if abs(r - 1) <= 0.03 else 'OUT'}")
        holds = all(abs(statistics.median(ratios[n]) - 1) <= 0.03 for n in ("pp1", "pp16", "bulk"))
        print(f"3% bound (median per-round ratio within 0.97-1.03): {'HOLDS' if holds else 'DOES NOT HOLD'}"
              f" in this run [{'; '.join(verdict)}] ({args.rounds} rounds)")
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(directory, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
