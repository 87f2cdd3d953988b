"""Cost of sniff pressure's per-connection hooks (core/sniff_pressure.py) on the sniffing path.

    python bench/sniff_pressure_bench.py [--connections N] [--rounds R]

In memory (no sockets), like bench/sniff_bench.py: N connections each send one HTTP
request and are routed, with a ``max_connections`` cap so the hooks are live (each
connection joins and leaves its listener's sniffing set). Each round measures that
and the same multiplexer with the two hooks replaced by no-ops (the baseline),
alternating which goes first, and prints the ratio of the medians. Bounded by N x R connections.
"""

from __future__ import annotations

import argparse
import statistics

from sniff_bench import run
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from portmux.core.limits import Limits
from portmux.core.mux import Multiplexer
from portmux.targets.factory import FactoryTarget

REQUEST = b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    mux = Multiplexer(MemoryReactorClock(), limits=Limits(max_connections=1 << 30))
    mux.add_route(FactoryTarget(Factory.forProtocol(Protocol)), protocol="http")
    mux.startFactory()
    live = mux.pressure.make_room, mux.pressure.track
    off = (lambda gate: None), (lambda sniffer, gate: None)
    with_hooks: list[float] = []
    without: list[float] = []
    for round_number in range(args.rounds):
        order = ((live, with_hooks), (off, without))
        for hooks, results in order if round_number % 2 else order[::-1]:  # alternate who goes first
            mux.pressure.make_room, mux.pressure.track = hooks  # type: ignore[method-assign]
            results.append(run(mux, REQUEST, args.connections))
            mux.connections.clear()  # they never close here; keep every round the same size
    on, base = statistics.median(with_hooks) * 1e6, statistics.median(without) * 1e6
    print(f"accept + sniff + attach: {on:.1f} us/connection with sniff pressure, "
          f"{base:.1f} us without (no-op hooks, same run): ratio {on / base:.3f}")


if __name__ == "__main__":
    main()
