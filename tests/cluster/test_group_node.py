"""A node with ``processes = 2`` in a two-node etcd cluster: both its processes route every worker.

Node a runs two processes, node b one; real nc clients reach node b's proxy-mode
worker (an etcd route) and node a's own handoff worker through node a, whichever of
its processes accepted them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import MISSING, Etcd, Node, Processes, free_port, wait_for
from tests.support import nc

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")

SVC_A = "handoff:protocol=tcpmux,service=svc-a"
SVC_B = "node-b:protocol=tcpmux,service=svc-b"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def start_worker(processes: Processes, node: Node, name: str, service: str, mode: str) -> None:
    advertise = f"tcp:{node.host}:{free_port(node.host)}"
    processes.twistd(
        name, "portmux-worker", "--control", f"unix:{node.control}", "--match",
        f"protocol=tcpmux,service={service}", "--mode", mode, "--advertise", advertise,
        "--retry", "0.3", "--factory", "tests.cluster.named_worker:tcpmux", env={"PORTMUX_TEST_NAME": name})


def test_every_process_of_a_node_routes_local_and_cluster_workers(processes: Processes, tmp_path: Path) -> None:
    etcd = Etcd(processes, tmp_path)
    etcd.start()
    a = Node(processes, tmp_path, "node-a", "127.0.0.2", etcd)
    a.config.write_text("processes = 2\n" + a.config.read_text())
    b = Node(processes, tmp_path, "node-b", "127.0.0.3", etcd)
    a.start()
    b.start()
    wait_for(lambda: re.search(r"\[process 2\] .*portmux listening", a.log.read_text()), "node a's child")

    start_worker(processes, a, "svc-a", "svc-a", "handoff")
    start_worker(processes, b, "svc-b", "svc-b", "proxy")
    wait_for(lambda: {SVC_A, SVC_B} <= a.routes(), "node a to route both workers")

    for number in range(24):
        for service in ("svc-a", "svc-b"):
            line = f"{service} {number}\n".encode()
            out = nc(a.direct_port, f"{service}\r\n".encode() + line, line, host=a.host)
            assert out == f"+\r\nthis is {service}\n".encode() + line, (service, number, out)

    def passed_up() -> dict[str, int]:
        listeners = {entry["name"]: entry.get("routed", {}) for entry in a.status()["listeners"]}
        return listeners.get("process 2", {})

    wait_for(lambda: passed_up().get(SVC_A, 0) > 0 and passed_up().get(SVC_B, 0) > 0,
             "node a's child to have passed some of each up")
