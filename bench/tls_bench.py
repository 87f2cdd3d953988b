"""TLS handshakes/s and HTTPS request latency: portmux termination vs a direct Twisted HTTPS server.

Both servers run in this process on loopback with the same certificate and options;
clients are Python ssl sockets in a worker thread. Bounded in count and time.

    /work/venv/bin/python bench/tls_bench.py [--handshakes 300] [--requests 1000]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme  # noqa: E402
from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from portmux.mux import Multiplexer  # noqa: E402
from portmux.routing import Match, Route  # noqa: E402
from portmux.targets.resource import ResourceTarget  # noqa: E402
from portmux.targets.tls import TLSTarget  # noqa: E402
from portmux.tlsconfig import CertificateStore, TLSSettings  # noqa: E402

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


def run(args: argparse.Namespace, direct_port: int, mux_port: int, ca_file: str) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    results: dict[str, tuple[float, list[float]]] = {}
    for label, port in (("direct", direct_port), ("portmux", mux_port)):
        latencies(port, context, 50)  # warm up
        rate = handshakes(port, context, args.handshakes)
        times = latencies(port, context, args.requests)
        results[label] = (rate, times)
    print(f"{'server':<10} {'handshakes/s':>13} {'median µs':>10} {'p99 µs':>9}")
    for label, (rate, times) in results.items():
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{label:<10} {rate:13.0f} {statistics.median(times):10.0f} {p99:9.0f}")
    (d_rate, d_times), (m_rate, m_times) = results["direct"], results["portmux"]
    print(
        f"portmux/direct: handshakes {m_rate / d_rate:.2f}x, "
        f"median latency {statistics.median(m_times) / statistics.median(d_times):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
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
    d = deferToThread(run, args, direct.getHost().port, port.getHost().port, str(ca_file))
    d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    main()
