"""Objects per registered route stay few, so CPython's full collections stay short (issue 11).

Counted, not timed: a full collection walks every GC-tracked object, and 10,000
registrations once cost ~33 each (closures per match check, pyrsistent buckets,
per-route members and targets), stalling the reactor ~150 ms. The bound here is
what a registration may add; bench/registration_bench.py prints the figure.
"""

from __future__ import annotations

import gc
from collections import Counter

from twisted.internet import reactor
from twisted.internet.testing import StringTransport

from portmux.control._server import ControlFactory
from portmux.core.mux import Multiplexer
from portmux.targets.echo import EchoFactory

ROUTES = 2000
CONNECTIONS = 10
BOUND = 7.0
"""GC-tracked objects one registration may add: ~6.2 measured here, 5.7 at 10,000 routes
(Route, Match, the group that is also its target, HAMT nodes); 33 before issue 11's fix."""


def match_for(index: int) -> dict[str, str]:
    """The bench's mix: TCPMUX names, net.tcp Via addresses, HTTP host + path."""
    family = index % 4
    if family == 0:
        return {"protocol": "tcpmux", "service": f"svc{index}/{1 + index % 3}"}
    if family == 1:
        return {"protocol": "nmf", "via": f"net.tcp://host{index % 50}.example/app{index}/"}
    return {"protocol": "http", "host": f"h{index % 200}.example", "path": f"/api/{index}"}


def tracked() -> Counter[str]:
    gc.collect()
    return Counter(type(thing).__name__ for thing in gc.get_objects())


def test_a_registration_adds_few_tracked_objects() -> None:
    mux = Multiplexer(reactor, [])
    mux.add_route(EchoFactory(), name="static-web", protocol="http", host="*", path="/")
    factory = ControlFactory(reactor, mux, credentials=lambda transport: (1, 0, 0), max_registrations=ROUTES)
    connections = []
    for _ in range(CONNECTIONS):
        connection = factory.buildProtocol(None)
        connection.makeConnection(StringTransport())
        connection.handle({"op": "hello", "id": 0, "version": 2})
        connections.append(connection)
    before = tracked()
    for index in range(ROUTES):
        connections[index % CONNECTIONS].handle(
            {"op": "register", "id": index + 1, "match": match_for(index), "mode": "handoff"})
    added = tracked() - before
    try:
        assert len(mux.router.registered) == ROUTES
        per_route = sum(added.values()) / ROUTES
        assert per_route <= BOUND, f"{per_route:.2f} tracked objects per route: {added.most_common(8)}"
    finally:
        for connection in connections:
            connection.transport.loseConnection()
            connection.connectionLost(None)
    assert len(mux.router.registered) == 0  # every route went with its connection
    left = tracked() - before
    # Nothing per route stays: only bounded caches (urlsplit's 128 results, buffered log events).
    assert sum(left.values()) < ROUTES / 4, f"left behind: {left.most_common(8)}"
