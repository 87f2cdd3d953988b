"""`twistd -n portmux` as a real process: default config, real clients, bad config, SIGHUP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
LISTENING = re.compile(rb"portmux listening on .* \(127\.0\.0\.1:(\d+)\)")


def start_portmux(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start twistd portmux on an ephemeral port; return the process, port and log path."""
    log = tmp_path / "portmux.log"
    process = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux",
         "--listen", "tcp:0:interface=127.0.0.1", *args],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_bytes() if log.exists() else b""
        found = LISTENING.search(text)
        if found:
            return process, int(found.group(1)), log
        if process.poll() is not None:
            raise AssertionError(f"portmux exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("portmux did not report its port")


@pytest.fixture
def portmux(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    process, port, log = start_portmux(tmp_path)
    yield port, log
    process.send_signal(signal.SIGTERM)
    process.wait(10)


def tcpmux(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_twistd_lists_the_plugin() -> None:
    out = subprocess.run([*TWISTD, "--help"], check=False, capture_output=True, timeout=60).stdout
    assert re.search(rb"^\s+portmux\s", out, re.MULTILINE), out


def test_twistd_portmux_help_documents_every_option() -> None:
    out = subprocess.run(
        [*TWISTD, "portmux", "--help"], check=False, capture_output=True, timeout=60
    ).stdout
    for option in (b"--config", b"--listen", b"--control"):
        assert option in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_default_config_serves_status_page_to_curl(portmux: tuple[int, Path]) -> None:
    port, log = portmux
    page = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/"],
                          check=False, capture_output=True, timeout=30)
    assert page.returncode == 0
    assert b"<h1>portmux</h1>" in page.stdout and b"echo" in page.stdout
    status = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/status.json"],
                            check=False, capture_output=True, timeout=30)
    snapshot = json.loads(status.stdout)
    names = [route["name"] for route in snapshot["routes"]]
    assert names == ["status", "help", "echo"]
    assert snapshot["routes"][0]["counters"]["connections"] >= 2
    text = log.read_text()
    for name in names:
        assert f"route {name}:" in text


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc not installed")
def test_default_config_answers_tcpmux_echo_and_help_to_nc(portmux: tuple[int, Path]) -> None:
    port, _ = portmux
    echoed = subprocess.run(["nc", "-q", "1", "127.0.0.1", str(port)],
                            input=b"echo\r\nhello", check=False, capture_output=True, timeout=30)
    assert echoed.stdout == b"+\r\nhello"
    assert tcpmux(port, b"HELP\r\n") == b"echo\r\n"
    refused = tcpmux(port, b"nosuch\r\n")
    assert refused.startswith(b"-") and refused.endswith(b"\r\n") and b"nosuch" in refused
    assert refused.count(b"\r\n") == 1


def test_bad_config_refuses_to_start_with_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[listen]]\nendpoint = "tcp:0"\n\n[[route]]\nname = "x"\n'
                      'match = { protocol = "tls", sni = 42 }\nproxy = ["tcp:127.0.0.1:1"]\n')
    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "portmux", "--config", str(config)],
                            check=False, capture_output=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert b"route[0].match.sni" in result.stdout + result.stderr


def test_sighup_reloads_routes_and_keeps_a_bad_config_out(tmp_path: Path) -> None:
    config = tmp_path / "portmux.toml"
    base = ('[[listen]]\nendpoint = "tcp:0"\n\n[[route]]\nname = "help"\n'
            'match = { protocol = "tcpmux", service = "help" }\nhelp = true\n\n')
    echo = '[[route]]\nname = "{name}"\nmatch = {{ protocol = "tcpmux", service = "{name}" }}\necho = true\n'
    config.write_text(base + echo.format(name="one"))
    process, port, log = start_portmux(tmp_path, "--config", str(config))
    try:
        assert tcpmux(port, b"HELP\r\n") == b"one\r\n"
        config.write_text(base + echo.format(name="two"))
        os.kill(process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while b"reloaded" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tcpmux(port, b"HELP\r\n") == b"two\r\n"
        config.write_text(base + '[[route]]\nname = "broken"\nmatch = { protocol = "nope" }\necho = true\n')
        os.kill(process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while b"reload refused" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"reload refused" in log.read_bytes()
        assert tcpmux(port, b"HELP\r\n") == b"two\r\n"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
