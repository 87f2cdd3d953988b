"""Cost of the untrusted-PROXY-header check on the sniffing path (issue 10, item 5).

    python bench/sniff_bench.py [--connections N] [--rounds R]

In memory (no sockets): N connections each send one request and are routed. Each
round measures the current code, then the same code with the check switched off
(``proxyheader.FIRST_BYTES = ()``, the baseline), alternating, and prints the ratio
of the medians. Bounded by N x R connections.
"""

from __future__ import annotations

import argparse
import statistics
import time

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from portmux.core.mux import Multiplexer
from portmux.protocols import proxyheader
from portmux.targets.factory import FactoryTarget

CASES = {
    "GET": b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n",
    "POST": b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n",
    "PING (tcpmux)": b"PING\r\n",
}


def run(mux: Multiplexer, data: bytes, count: int) -> float:
    """Seconds per connection to accept, sniff and attach ``count`` connections."""
    started = time.perf_counter()
    for _ in range(count):
        protocol = mux.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(data)
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    mux = Multiplexer(MemoryReactorClock())
    mux.add_route(FactoryTarget(Factory.forProtocol(Protocol)), protocol="http")
    mux.add_route(FactoryTarget(Factory.forProtocol(Protocol)), default=True)
    mux.startFactory()
    original = proxyheader.FIRST_BYTES
    print(f"{'case':16} {'check on':>12} {'check off':>12} {'ratio':>7}")
    for name, data in CASES.items():
        on: list[float] = []
        off: list[float] = []
        for _ in range(args.rounds):
            proxyheader.FIRST_BYTES = original
            on.append(run(mux, data, args.connections))
            proxyheader.FIRST_BYTES = ()
            off.append(run(mux, data, args.connections))
        proxyheader.FIRST_BYTES = original
        a, b = statistics.median(on), statistics.median(off)
        print(f"{name:16} {a * 1e6:10.2f}us {b * 1e6:10.2f}us {a / b:7.3f}")


if __name__ == "__main__":
    main()
