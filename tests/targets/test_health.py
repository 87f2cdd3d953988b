"""Backend health checks in a real ``twistd portmux``: HTTP checks, rotation, all down → 503 at once."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon.daemon_support import Daemon, start_backend
from tests.support import stop_process

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def curl(port: int) -> tuple[str, str, float]:
    """(status code, body, seconds) of one GET with curl."""
    started = time.monotonic()
    done = subprocess.run(["curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}",
                           f"http://127.0.0.1:{port}/"], check=False, capture_output=True, text=True)
    body, _, code = done.stdout.rpartition("\n")
    return code, body, time.monotonic() - started


def test_unhealthy_backends_leave_the_rotation_and_come_back(tmp_path: Path) -> None:
    good, good_port = start_backend()
    sick, sick_port = start_backend(status="500 Internal Server Error")  # accepts, but fails the check
    daemon = Daemon(tmp_path, f"""
        [[listen]]
        endpoint = "tcp:0:interface=127.0.0.1"
        [[route]]
        name = "web"
        match = {{ protocol = "http" }}
        [route.proxy]
        endpoints = ["tcp:127.0.0.1:{good_port}", "tcp:127.0.0.1:{sick_port}"]
        connect_timeout = 5.0
        health_check = {{ interval = 0.2, timeout = 1.0, fall = 2, rise = 2, http_path = "/health" }}
        """)
    try:
        daemon.wait_log(f"backend tcp:127.0.0.1:{sick_port} is DOWN (answered 'HTTP/1.0 500")
        answers = [curl(daemon.port) for _ in range(6)]
        assert all(code == "200" and body == f"hello from backend {good_port}\n" for code, body, _ in answers)

        stop_process(good)  # now every backend is down
        daemon.wait_log("every backend is down")
        code, body, took = curl(daemon.port)
        assert code == "503" and took < 2.0  # at once, not after connect timeouts
        assert str(good_port) not in body and "tcp:" not in body
        daemon.wait_log("no_backend_up (status 503)")

        good, _ = start_backend(port=good_port)
        daemon.wait_log(f"backend tcp:127.0.0.1:{good_port} is UP (HTTP 200)")
        code, body, _ = curl(daemon.port)
        assert code == "200" and body == f"hello from backend {good_port}\n"
    finally:
        daemon.stop()
        stop_process(good)
        stop_process(sick)
    log = daemon.text()
    assert log.count(f"backend tcp:127.0.0.1:{good_port} is DOWN") == 1
    assert log.count(f"backend tcp:127.0.0.1:{sick_port} is DOWN") == 1
