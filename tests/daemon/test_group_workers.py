"""``processes = 2`` with a control socket: a real worker's route reaches both processes.

Real twistd portmux (parent + child on SO_REUSEPORT twins), a real portmux-worker
registering a handoff route, real nc clients: every connection reaches the worker
with its bytes intact whichever process accepted it, no descriptor leaks, a
SIGKILLed child's replacement gets the routes again, and once the worker leaves
clients get the same TCPMUX refusal as with one process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.group_support import registered, wait_for
from tests.support import nc

TWISTD = str(Path(sys.executable).with_name("twistd"))
pytestmark = pytest.mark.skipif(
    not (os.path.exists(TWISTD) and shutil.which("curl") and shutil.which("nc")),
    reason="needs twistd, curl and nc",
)
ROUTE = "handoff:protocol=tcpmux,service=echo-h"
PROXY_ROUTE = "proxy:protocol=tcpmux,service=echo-p"
STARTED = re.compile(r"process 2 of 2 started \(pid (\d+)\)")
CHILD_LISTENING = re.compile(r"\[process 2\] .*portmux listening on inherited")
CLIENTS = 40






def echo_through(port: int, number: int, service: bytes = b"echo-h") -> None:
    """One nc client: TCPMUX ``service`` and a payload of its own, echoed back byte for byte."""
    payload = f"client {number} ".encode() + os.urandom(600).hex().encode() + b"\n"
    out = nc(port, service + b"\r\n" + payload, payload)
    assert out == b"+\r\n" + payload, (number, out[:80])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def no_more(before: tuple[int, int], *pids: int) -> bool:
    """No process holds more descriptors than ``before`` (a status request may have held one then)."""
    return all(fd_count(pid) <= count for pid, count in zip(pids, before, strict=True))


def status(port: int) -> dict[str, Any]:
    done = subprocess.run(
        ["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/admin/status.json"],
        check=True, capture_output=True, timeout=30,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def counts(port: int) -> tuple[int, int, int]:
    """(connections to ROUTE by the accepting listeners, by the route, passed up by process 2), group-wide."""
    group = status(port)
    listeners = {c["name"]: c.get("routed", {}) for c in group["listeners"]}
    accepted = sum(routed.get(ROUTE, 0) for name, routed in listeners.items() if not name.startswith("process "))
    route = next(r for r in group["routes"] if r["name"] == ROUTE)
    return accepted, route["counters"]["connections"], listeners.get("process 2", {}).get(ROUTE, 0)


def settled(port: int, condition: Callable[[tuple[int, int, int]], bool]) -> tuple[int, int, int]:
    """The counters once every process's report (each second) shows ``condition``."""
    found: list[tuple[int, int, int]] = []

    def check() -> bool:
        found.append(counts(port))
        return condition(found[-1])

    try:
        wait_for(check, "the group's counters", 10)
    except AssertionError:
        raise AssertionError(f"counters never settled: {found[-3:]}") from None
    return found[-1]


def test_worker_routes_reach_every_process(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    control = tmp_path / "control.sock"
    config = tmp_path / "portmux.toml"
    config.write_text(
        "processes = 2\n"
        '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        f'[control]\nendpoint = "unix:{control}"\n'
        '[[route]]\nname = "status"\nmatch = { protocol = "http", path = "/admin" }\nstatus = true\n'
    )
    log = tmp_path / "portmux.log"
    started.append(subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    portmux = started[0]
    text = lambda: log.read_text() if log.exists() else ""
    port = int(wait_for(lambda: re.search(r"portmux listening on tcp:0\S* \(127\.0\.0\.1:(\d+)\)", text()),
                        "the port").group(1))
    child = int(wait_for(lambda: STARTED.search(text()), "the child").group(1))
    wait_for(lambda: CHILD_LISTENING.search(text()), "the child listening")
    wait_for(control.exists, "the control socket")

    worker = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "portmux-worker", "--control", f"unix:{control}",
         "--match", "protocol=tcpmux,service=echo-h", "--factory", "portmux.targets.echo:EchoFactory"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    started.append(worker)
    proxied = subprocess.Popen(  # a proxy-mode worker: the parent proxies what a child passes up
        [TWISTD, "-n", "--pidfile=", "portmux-worker", "--control", f"unix:{control}", "--mode", "proxy",
         "--match", "protocol=tcpmux,service=echo-p", "--factory", "portmux.targets.echo:EchoFactory"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    started.append(proxied)
    wait_for(lambda: {ROUTE, PROXY_ROUTE} <= registered(control), "the registrations")

    echo_through(port, -1)  # warm both sides up before counting descriptors
    echo_through(port, -2, b"echo-p")  # (the proxy path's relay keeps one epoll descriptor)
    before = fd_count(portmux.pid), fd_count(child)
    for number in range(CLIENTS):
        echo_through(port, number)
    # Counted once in the group: by the accepting listener, and once on the route.
    total, _, from_child = settled(port, lambda c: c[0] == c[1] == CLIENTS + 1)
    assert total == CLIENTS + 1
    assert 0 < from_child < total, (total, from_child)  # both processes accepted some
    for _ in range(8):  # whichever process answers lists the parent's workers
        assert {w["name"] for w in status(port)["workers"]} == {ROUTE, PROXY_ROUTE}
    for number in range(16):
        echo_through(port, 1000 + number, b"echo-p")
    wait_for(lambda: no_more(before, portmux.pid, child), "descriptors back to before", 5)

    os.kill(child, signal.SIGKILL)
    replacement = int(wait_for(lambda: [int(p) for p in STARTED.findall(text()) if int(p) != child],
                               "the replacement")[0])
    wait_for(lambda: len(CHILD_LISTENING.findall(text())) == 2, "the replacement listening")
    for number in range(CLIENTS):  # the routes reached it before it accepted anything
        echo_through(port, 100 + number)
    # The killed child's own counters left with it; the parent's "process 2" count stays and grows.
    settled(port, lambda c: c[0] >= CLIENTS and c[2] > from_child)
    before = fd_count(portmux.pid), fd_count(replacement)
    for number in range(10):
        echo_through(port, 200 + number)
    wait_for(lambda: no_more(before, portmux.pid, replacement), "descriptors back to before", 5)

    portmux.send_signal(signal.SIGHUP)  # both reload; the worker's route survives in both
    wait_for(lambda: len(re.findall(r"\] reloaded: \d+ routes", text())) == 2, "both reloaded")
    for number in range(20):
        echo_through(port, 300 + number)

    worker.send_signal(signal.SIGKILL)
    worker.wait(5)
    wait_for(lambda: ROUTE not in registered(control), "the route dropped")
    time.sleep(0.2)  # the remove reaches the child over its channel
    refused = [nc(port, b"echo-h\r\nhello\n", b"\n") for _ in range(20)]
    assert all(out.startswith(b"-") and b"echo-h" in out for out in refused), refused
    wait_for(lambda: re.search(r"\[process 2\] .*refused .*protocol=tcpmux", text()),
             "a refusal by the child itself")

    portmux.send_signal(signal.SIGTERM)
    assert portmux.wait(20) in (0, -signal.SIGTERM)
    wait_for(lambda: gone(replacement), "the child stopped too", 5)
