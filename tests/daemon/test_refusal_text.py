"""What a refused client is told, and what the log keeps (issue 10, item 8).

Real curl and nc against `twistd -n portmux`: a dead backend is a short generic
`502 Bad Gateway: backend unreachable` (HTTP) or `-backend unreachable` (TCPMUX),
while the one log line names the backends and the error. Status lines carry the
standard reason phrases (`431 Request Header Fields Too Large`, `408 Request Timeout`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_daemon import start_portmux
from tests.support import free_port

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[int, Path, int]]:
    dead = free_port()  # a closed loopback port: the backend is down
    config = tmp_path / "portmux.toml"
    config.write_text(f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[sniff]
preamble_timeout = 1.0
preamble_max_bytes = 4096

[[route]]
name = "web"
match = {{ protocol = "http" }}
proxy = ["tcp:127.0.0.1:{dead}"]

[[route]]
name = "thing"
match = {{ protocol = "tcpmux", service = "thing" }}
proxy = ["tcp:127.0.0.1:{dead}"]
""")
    process, port, log = start_portmux(tmp_path, "--config", str(config))
    try:
        yield port, log, dead
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "-i", "--max-time", "10", *args],
                          capture_output=True, check=False, timeout=30)


def _refusal_lines(log: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in log.read_text().splitlines() if "refused" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_dead_backend_is_generic_to_curl_and_detailed_in_the_log(
    daemon: tuple[int, Path, int]
) -> None:
    port, log, dead = daemon
    done = _curl(f"http://127.0.0.1:{port}/")
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert body == b"502 Bad Gateway: backend unreachable\n"
    lines = _refusal_lines(log, 1)
    assert len(lines) == 1
    assert f"tcp:127.0.0.1:{dead}" in lines[0] and "backend unreachable" in lines[0]


def test_dead_backend_is_generic_to_a_tcpmux_client(daemon: tuple[int, Path, int]) -> None:
    if shutil.which("nc") is None:
        pytest.skip("nc not installed (Debian: netcat-openbsd)")
    port, log, dead = daemon
    done = subprocess.run(["nc", "-N", "-w", "5", "127.0.0.1", str(port)], input=b"thing\r\n",
                          capture_output=True, check=False, timeout=30)
    assert done.stdout == b"-backend unreachable\r\n"
    assert str(dead) in _refusal_lines(log, 1)[0]


def test_oversized_headers_get_431_with_its_phrase(daemon: tuple[int, Path, int]) -> None:
    port, _, _ = daemon
    done = _curl("-H", "X-Big: " + "a" * 90000, f"http://127.0.0.1:{port}/")
    assert done.stdout.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


def test_incomplete_request_gets_408_with_its_phrase(daemon: tuple[int, Path, int]) -> None:
    if shutil.which("nc") is None:
        pytest.skip("nc not installed (Debian: netcat-openbsd)")
    port, _, _ = daemon
    # Headers never finished: nc keeps the connection open until portmux answers.
    done = subprocess.run(["nc", "-w", "5", "127.0.0.1", str(port)],
                          input=b"GET / HTTP/1.1\r\nHost: a\r\n",
                          capture_output=True, check=False, timeout=30)
    assert done.stdout.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
