"""``processes = 2`` under a real twistd: both serve curl, a killed child is replaced, SIGHUP and stop reach all."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, stop_process, wait_listening

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CHILD_LISTENING = re.compile(r"\[process 2\] .*portmux listening on inherited")
STARTED = re.compile(r"process 2 of 2 started \(pid (\d+)\)")

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def wait_for(condition: Callable[[], object], limit: float = 20.0) -> object:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def curl(port: int) -> bytes:
    done = subprocess.run(["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/hello.txt"],
                          check=False, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not serving: look at its state
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


@contextmanager
def web_group(tmp_path: Path, body: bytes) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """``twistd portmux`` with ``processes = 2``: a status route and a proxy route to a real
    ``python -m http.server`` serving ``hello.txt`` = ``body``; yields (port, log, twistd)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_bytes(body)
    backend_port, port = free_port(), free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(backend_port)],
        cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(backend_port, backend)
        config = tmp_path / "portmux.toml"
        config.write_text(
            "processes = 2\n"
            f'[[listen]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n'
            '[[route]]\nname = "status"\nmatch = { protocol = "http", path = "/admin" }\n'
            "status = true\n"
            f'[[route]]\nname = "web"\nmatch = {{ protocol = "http" }}\n'
            f'proxy = ["tcp:127.0.0.1:{backend_port}"]\n'
        )
        log = tmp_path / "portmux.log"
        portmux = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(config)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            yield port, log, portmux
        finally:
            if portmux.poll() is None:
                stop_process(portmux)
    finally:
        stop_process(backend)


def test_two_processes_serve_survive_a_killed_child_and_stop_together(tmp_path: Path) -> None:
    with web_group(tmp_path, b"hello from the backend\n") as (port, log, portmux):
        text = lambda: log.read_text() if log.exists() else ""
        first = int(wait_for(lambda: STARTED.search(text())).group(1))  # type: ignore[union-attr]
        wait_for(lambda: CHILD_LISTENING.search(text()))
        for _ in range(20):
            assert curl(port) == b"hello from the backend\n"

        os.kill(first, signal.SIGKILL)  # the parent keeps serving meanwhile
        for _ in range(10):
            assert curl(port) == b"hello from the backend\n"
        second = int(wait_for(lambda: [m for m in STARTED.findall(text()) if int(m) != first])[0])  # type: ignore[index]
        assert second != first and alive(second) and not alive(first)
        assert "process 2 exited" in text()
        wait_for(lambda: len(CHILD_LISTENING.findall(text())) == 2)
        for _ in range(20):
            assert curl(port) == b"hello from the backend\n"

        # Either process answers for the whole group: counters summed over both.
        def group_status() -> dict[str, Any]:
            done = subprocess.run(
                ["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/admin/status.json"],
                check=True, capture_output=True, timeout=30,
            )
            return json.loads(done.stdout)  # type: ignore[no-any-return]

        time.sleep(1.5)  # a report from the new child
        for _ in range(6):
            status = group_status()
            assert status["processes"] == 2
            web = next(r for r in status["routes"] if r["name"] == "web")
            # 30 before the kill may include some the killed child served (gone with it)
            assert web["counters"]["connections"] >= 20, status
        metrics = subprocess.run(
            ["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/admin/metrics"],
            check=True, capture_output=True, timeout=30,
        ).stdout
        assert b"portmux_processes 2.0" in metrics, metrics[:2000]

        portmux.send_signal(signal.SIGHUP)
        wait_for(lambda: len(re.findall(r"\] reloaded: 2 routes", text())) == 2)  # parent + child

        portmux.send_signal(signal.SIGTERM)
        assert portmux.wait(20) in (0, -signal.SIGTERM)  # twistd may exit by the signal it got
        wait_for(lambda: not alive(second), limit=5)


LISTEN = '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'


def test_processes_is_declared_and_checked() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from portmux.daemon.config import ConfigError, parse_config

    reactor = MemoryReactorClock()
    assert parse_config(LISTEN, "t.toml", reactor).processes == 1
    assert parse_config("processes = 3\n" + LISTEN, "t.toml", reactor).processes == 3
    with pytest.raises(ConfigError, match="processes: must be greater than 0"):
        parse_config("processes = 0\n" + LISTEN, "t.toml", reactor)
    combined = parse_config('processes = 2\n[control]\nendpoint = "unix:/tmp/x"\n' + LISTEN, "t.toml", reactor)
    assert combined.processes == 2 and combined.control is not None  # the parent owns it (group_channel)


def test_twistd_processes_option() -> None:
    out = subprocess.run([*TWISTD, "portmux", "--help"], check=False, capture_output=True,
                         timeout=60).stdout
    assert b"--processes" in out
    done = subprocess.run([*TWISTD, "-n", "--pidfile=", "portmux", "--processes", "0"],
                          check=False, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"--processes must be at least 1" in done.stderr + done.stdout
