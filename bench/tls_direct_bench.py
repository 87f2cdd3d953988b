"""TLS handshakes/s and HTTPS request latency: portmux termination vs a direct Twisted HTTPS server.

Both servers run in one child process (pinned to CPU 1 when there are two) on
loopback, with the same certificate and TLS options; the client is this process
(CPU 0), Python ssl sockets. Repetitions alternate direct/portmux and medians are
reported, so background load hits both alike. Bounded in count and time.

    python bench/tls_direct_bench.py [--handshakes 300] [--requests 1000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme
from twisted.internet import reactor as _reactor
from twisted.web.server import Site

from portmux.core.mux import Multiplexer
from portmux.core.routing import Match, Route
from portmux.targets.resource import ResourceTarget
from portmux.targets.tls import TLSTarget
from portmux.tls import CertificateStore, TLSSettings

reactor: Any = _reactor
NAME = "bench.example.com"
REQUEST = f"GET /hello HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode()
DEADLINE = 60.0


def root() -> Any:
    from twisted.web.resource import Resource
    from twisted.web.static import Data

    resource = Resource()
    resource.putChild(b"hello", Data(b"hello\n", "text/plain"))
    return resource


def handshakes(port: int, context: ssl.SSLContext, count: int) -> float:
    """Full handshakes (no resumption) per second, one connection after another."""
    start = time.perf_counter()
    done = 0
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname=NAME) as conn:
                conn.do_handshake()
        done += 1
        if time.perf_counter() - start > DEADLINE:
            break
    return done / (time.perf_counter() - start)


def resumed_handshakes(port: int, context: ssl.SSLContext, count: int) -> float:
    """Resumed handshakes per second (one session, from a first full handshake + request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=NAME) as conn:
        conn.sendall(REQUEST)
        while not conn.recv(65536).endswith(b"hello\n"):  # also takes in the tickets
            pass
        session = conn.session
    start = time.perf_counter()
    done = 0
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname=NAME, session=session) as conn:
                conn.do_handshake()
                if not conn.session_reused:
                    raise RuntimeError("the server did not resume the session")
        done += 1
        if time.perf_counter() - start > DEADLINE:
            break
    return done / (time.perf_counter() - start)


def latencies(port: int, context: ssl.SSLContext, count: int) -> list[float]:
    """Per-request round trips on one keep-alive HTTPS connection, in microseconds."""
    times: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname=NAME) as conn:
            begin = time.perf_counter()
            for _ in range(count):
                t0 = time.perf_counter()
                conn.sendall(REQUEST)
                data = b""
                while not data.endswith(b"hello\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("server closed")
                    data += chunk
                times.append((time.perf_counter() - t0) * 1e6)
                if time.perf_counter() - begin > DEADLINE:
                    break
    return times


def pin(cpu: int) -> None:
    """Pin this process to ``cpu`` when the machine has more than one."""
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def serve() -> None:
    """Child role: both HTTPS servers on ephemeral loopback ports; print them, then serve."""
    pin(1)
    tmp = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = tmp / "cert.pem"
    ca.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(cert))
    store = CertificateStore([cert], settings=TLSSettings(alpn=("http/1.1",)))
    direct = reactor.listenSSL(0, Site(root()), store.options, interface="127.0.0.1")
    target = TLSTarget(
        reactor, store, [Route("site", Match(protocol="http"), ResourceTarget(root()))]
    )
    mux = Multiplexer(reactor, [Route("https", Match(protocol="tls"), target)])
    port = reactor.listenTCP(0, mux, interface="127.0.0.1")
    ports = {"direct": direct.getHost().port, "portmux": port.getHost().port, "ca": str(ca_file)}
    print(json.dumps(ports), flush=True)
    reactor.callLater(DEADLINE * 10, reactor.stop)  # never outlive a lost parent for long
    reactor.run()


def measure(args: argparse.Namespace, ports: dict[str, Any]) -> None:
    """Alternate direct/portmux ``args.reps`` times; print medians and ratios."""
    context = ssl.create_default_context(cafile=ports["ca"])
    context.set_alpn_protocols(["http/1.1"])
    rates: dict[str, list[float]] = {"direct": [], "portmux": []}
    resumed: dict[str, list[float]] = {"direct": [], "portmux": []}
    times: dict[str, list[float]] = {"direct": [], "portmux": []}
    labels = ("direct", "portmux")
    for label in labels:
        latencies(ports[label], context, 50)  # warm up
    for _ in range(args.reps):
        for label in labels:
            rates[label].append(handshakes(ports[label], context, args.handshakes))
            resumed[label].append(resumed_handshakes(ports[label], context, args.handshakes))
            times[label].extend(latencies(ports[label], context, args.requests))
    print(f"{'server':<10} {'handshakes/s':>13} {'resumed/s':>10} {'median µs':>10} {'p99 µs':>9}")
    for label, samples in times.items():
        series = sorted(samples)
        p99 = series[min(len(series) - 1, int(len(series) * 0.99))]
        print(f"{label:<10} {statistics.median(rates[label]):13.0f} "
              f"{statistics.median(resumed[label]):10.0f} "
              f"{statistics.median(series):10.0f} {p99:9.0f}")
    d_rate, m_rate = statistics.median(rates["direct"]), statistics.median(rates["portmux"])
    d_lat, m_lat = statistics.median(times["direct"]), statistics.median(times["portmux"])
    m_resumed = statistics.median(resumed["portmux"])
    print(f"portmux/direct: handshakes/s {m_rate / d_rate:.2f}x, "
          f"resumed {m_resumed / statistics.median(resumed['direct']):.2f}x, "
          f"median request latency {m_lat / d_lat:.2f}x")
    print(f"portmux resumed/full handshakes: {m_resumed / m_rate:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--role", choices=("client", "server"), default="client")
    args = parser.parse_args()
    if args.role == "server":
        serve()
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--role", "server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        pin(0)
        measure(args, ports)
    finally:
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    main()
