"""Two portmux nodes sharing routes through a real etcd, behind a real HAProxy (PROXY v2).

Workers register on each node; real curl and nc reach every worker through either
node; then a worker, a node and etcd are killed in turn and the failure table of
docs/scale-out.md is checked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import (
    MISSING,
    Etcd,
    HAProxy,
    Node,
    Processes,
    curl,
    free_port,
    wait_for,
)
from tests.support import nc

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def start_worker(processes: Processes, node: Node, name: str, match: str, kind: str, mode: str = "handoff") -> object:
    advertise = f"tcp:{node.host}:{free_port(node.host)}"
    proc, _ = processes.twistd(
        name, "portmux-worker", "--control", f"unix:{node.control}", "--match", match, "--mode", mode,
        "--advertise", advertise, "--retry", "0.3", "--factory", f"tests.cluster.named_worker:{kind}",
        env={"PORTMUX_TEST_NAME": name})
    return proc


HTTP_A = "node-a:protocol=http,host=a.test,path=/"
HTTP_B = "node-b:protocol=http,host=b.test,path=/"
SVC_A = "node-a:protocol=tcpmux,service=svc-a"
SVC_B = "node-b:protocol=tcpmux,service=svc-b"
LOCAL = {"handoff:protocol=http,host=a.test,path=/", "handoff:protocol=tcpmux,service=svc-a",
         "proxy:protocol=http,host=b.test,path=/", "proxy:protocol=tcpmux,service=svc-b"}


def test_two_nodes_route_every_worker_and_survive_failures(processes: Processes, tmp_path: Path) -> None:
    etcd = Etcd(processes, tmp_path)
    etcd.start()
    a = Node(processes, tmp_path, "node-a", "127.0.0.2", etcd)
    b = Node(processes, tmp_path, "node-b", "127.0.0.3", etcd)
    a.start()
    b.start()
    haproxy = HAProxy(processes, tmp_path, [a, b])
    haproxy.start()

    # Handoff workers on node a, proxy-mode workers on node b; each advertises its own address.
    web_a = start_worker(processes, a, "web-a", "protocol=http,host=a.test,path=/", "http")
    svc_a = start_worker(processes, a, "svc-a", "protocol=tcpmux,service=svc-a", "tcpmux")
    start_worker(processes, b, "web-b", "protocol=http,host=b.test,path=/", "http", mode="proxy")
    svc_b = start_worker(processes, b, "svc-b", "protocol=tcpmux,service=svc-b", "tcpmux", mode="proxy")
    wait_for(lambda: {HTTP_B, SVC_B} <= a.routes(), "node a to route node b's workers")
    wait_for(lambda: {HTTP_A, SVC_A} <= b.routes(), "node b to route node a's workers")

    # Every worker through either node (and through the balancer): curl and nc.
    for front in ("via_node-a", "via_node-b", "lb", "lb"):
        port = haproxy.ports[front]
        assert curl(port, "a.test") == (200, "served by web-a"), front
        assert curl(port, "b.test") == (200, "served by web-b"), front
        for service in ("svc-a", "svc-b"):
            out = nc(port, f"{service}\r\nping\n".encode(), b"ping\n")
            assert out == f"+\r\nthis is {service}\nping\n".encode(), (front, out)

    # A route stored in etcd reaches every node with one real `etcdctl put`; a bad one is
    # refused with the config checker's words, in the log and on the status page.
    etcd.ctl("put", "/portmux-test/routes/stored-echo",
             '{"match": {"protocol": "tcpmux", "service": "stored-echo"}, "echo": true}')
    etcd.ctl("put", "/portmux-test/routes/broken", '{"match": {"protocol": "tcpmux"}, "echo": "yes"}')
    for node in (a, b):
        wait_for(lambda node=node: node.status()["registry"]["etcd_routes"] == ["stored-echo"],
                 f"{node.name} to load the stored route")
        errors = node.status()["registry"]["etcd_route_errors"]
        assert errors == {"broken": "etcd:/portmux-test/routes/broken: echo: expected true, got \"yes\""}, errors
        assert "route broken from etcd refused" in node.log.read_text()
        out = nc(haproxy.ports[f"via_{node.name}"], b"stored-echo\r\nhi\n", b"hi\n")
        assert out == b"+\r\nhi\n", out

    # Cluster-wide conflict: a worker on node b may not take node a's address.
    thief = start_worker(processes, b, "thief", "protocol=http,host=a.test,path=/", "http")
    thief.wait(15)  # type: ignore[attr-defined]
    log = (tmp_path / "thief.log").read_text()
    assert "ConflictingRegistration" in log and "already registered on node node-a" in log, log
    assert curl(haproxy.ports["via_node-b"], "a.test") == (200, "served by web-a")

    # 1. A worker dies: its route vanishes on both nodes (one watch round trip on the other).
    Processes.kill(web_a)  # type: ignore[arg-type]
    wait_for(lambda: HTTP_A not in b.routes() and "handoff:protocol=http,host=a.test,path=/" not in a.routes(),
             "web-a's route to vanish everywhere", deadline=5)
    for front in ("via_node-a", "via_node-b"):
        assert curl(haproxy.ports[front], "a.test")[0] == 404

    # 2. A node dies: its lease expires (TTL 2 s) and its workers' routes vanish on the other node.
    a.kill()
    killed = time.monotonic()
    wait_for(lambda: SVC_A not in b.routes(), "node a's routes to expire on node b", deadline=8)
    assert time.monotonic() - killed < 2 + 3  # TTL plus etcd's expiry sweep
    assert curl(haproxy.ports["lb"], "b.test") == (200, "served by web-b")  # HAProxy skips the dead node
    assert curl(haproxy.ports["lb"], "b.test") == (200, "served by web-b")

    # The node comes back; its surviving worker re-registers and is routed everywhere again.
    a.start()
    wait_for(lambda: SVC_A in b.routes() and {HTTP_B, SVC_B} <= a.routes(),
             lambda: f"node a back in the cluster: a {a.routes()}, b {b.routes()}")
    reads_before = a.status()["registry"]["full_reads"]

    # 3. etcd dies: both nodes keep routing with the last table and say they are stale.
    etcd.kill()
    for node in (a, b):
        wait_for(lambda node=node: node.status()["portmux_registry_stale"], f"{node.name} to report stale", 8)
        assert "portmux_registry_stale 1" in node.metrics()
        assert "registry: etcd unreachable" in node.log.read_text()
        assert node.status()["registry"]["reason"]
    assert curl(haproxy.ports["via_node-a"], "b.test") == (200, "served by web-b")
    out = nc(haproxy.ports["via_node-b"], b"svc-a\r\nping\n", b"ping\n")
    assert out == b"+\r\nthis is svc-a\nping\n"
    # New registrations are refused with a clear reason (the worker tries again later).
    start_worker(processes, b, "late", "protocol=http,host=late.test,path=/", "http")
    late_log = tmp_path / "late.log"
    wait_for(lambda: "RegistryUnavailable" in late_log.read_text(), "the late worker to be refused")
    assert "is unreachable" in late_log.read_text() and "new registrations are refused" in late_log.read_text()
    # A worker dies meanwhile: its node drops it at once; the other keeps it until etcd is back.
    Processes.kill(svc_b)  # type: ignore[arg-type]
    wait_for(lambda: "proxy:protocol=tcpmux,service=svc-b" not in b.routes(), "node b to drop svc-b")
    assert SVC_B in a.routes()

    # etcd returns: the watch resumes from the last revision and the delete is not missed.
    etcd.start()
    wait_for(lambda: SVC_B not in a.routes(), "node a to see svc-b's delete after etcd returns", 10)
    for node in (a, b):
        wait_for(lambda node=node: not node.status()["portmux_registry_stale"], f"{node.name} in sync again", 10)
    assert a.status()["registry"]["full_reads"] == reads_before  # resumed, not re-read
    assert "watch resumed from revision" in a.log.read_text()
    assert curl(haproxy.ports["via_node-a"], "b.test") == (200, "served by web-b")
    assert svc_a.poll() is None  # type: ignore[attr-defined]
    # The refused worker got in once etcd was back, and is reached through the other node.
    wait_for(lambda: "node-b:protocol=http,host=late.test,path=/" in a.routes(), "the late worker's route on a")
    assert curl(haproxy.ports["via_node-a"], "late.test") == (200, "served by late")
