"""Issue 12 item 2: workers register URL prefixes HTTP.SYS style and get each request.

Two real worker processes (tests/worker/http_worker.py, three lines of
portmux.worker.serve_site each) own ``/a/`` and ``/b/`` of one host; curl sends
requests for both on one connection and each reaches its worker. Strong (+) beats
exact host beats weak (*), longest prefix within a class; a [[reservation]]
(urlacl) refuses other uids; a prefix vanishes with its worker's control
connection and the request in flight then gets 503 and one log line.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.targets.http_support import Processes

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
WORKER = Path(__file__).resolve().parent / "http_worker.py"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[dict[str, Any]]:
    processes = Processes()
    control = tmp_path / "control.sock"
    try:
        port, _, log = processes.portmux(tmp_path, f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
[control]
endpoint = "unix:{control}"
[[reservation]]
match = {{ protocol = "http", via = "http://+/reserved/" }}
uids = [54321]
""")
        yield {"port": port, "control": str(control), "log": log, "processes": processes}
    finally:
        processes.stop()


def worker(daemon: dict[str, Any], name: str, *prefixes: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, str(WORKER), daemon["control"], name, *prefixes],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    daemon["processes"].processes.append(process)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def curl(*args: str) -> str:
    result = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_two_workers_own_a_and_b_of_one_host_per_request(daemon: dict[str, Any]) -> None:
    port = daemon["port"]
    a, said_a = worker(daemon, "A", f"http://site.example:{port}/a/")
    b, said_b = worker(daemon, "B", "http://+/b/")
    assert (said_a, said_b) == ("registered", "registered")
    base = f"http://127.0.0.1:{port}"
    out = curl("-w", "[%{num_connects}]\n", "-H", "Host: site.example",
               f"{base}/a/1", f"{base}/b/2", f"{base}/a/3")
    lines = out.splitlines()
    assert lines[0] == f"A pid={a.pid} /a/1"
    assert lines[1] == "[1]"
    assert lines[2] == f"B pid={b.pid} /b/2"
    assert lines[4] == f"A pid={a.pid} /a/3"
    assert lines[3] == lines[5] == "[0]"  # one connection for all three


def test_precedence_strong_exact_weak_then_longest_prefix(daemon: dict[str, Any]) -> None:
    port = daemon["port"]
    worker(daemon, "weak", "http://*/")
    worker(daemon, "exact", "http://site.example/")
    worker(daemon, "strong", "http://+/api/")
    _, said = worker(daemon, "longer", "http://+/api/v2/")
    assert said == "registered"
    base = f"http://127.0.0.1:{port}"

    def who(host: str, path: str) -> str:
        return curl("-H", f"Host: {host}", f"{base}{path}").split()[0]

    assert who("site.example", "/api/x") == "strong"  # + beats an exact host
    assert who("site.example", "/api/v2/x") == "longer"  # longest prefix among +
    assert who("site.example", "/other") == "exact"  # exact beats *
    assert who("else.example", "/other") == "weak"


def test_reserved_prefix_refused_for_other_uids(daemon: dict[str, Any]) -> None:
    _, said = worker(daemon, "R", "http://+/reserved/x/")
    assert said.startswith("refused") and "reserved for uids [54321]" in said


def test_prefix_vanishes_with_the_worker_and_in_flight_gets_503(daemon: dict[str, Any]) -> None:
    port = daemon["port"]
    _, said = worker(daemon, "L", "http://+/l/")
    assert said == "registered"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
        slow.sendall(b"GET /l/slow HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.3)
        assert curl(f"http://127.0.0.1:{port}/l/leave").startswith("L ")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    time.sleep(0.3)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/l/x") == "404"
    log = daemon["log"].read_text()
    assert log.count("the worker serving this prefix went away") == 1
