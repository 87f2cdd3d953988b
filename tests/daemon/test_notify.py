"""systemd integration: sd_notify over a real datagram socket, and the example units' socket activation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from portmux.daemon.notify import sd_notify
from tests.daemon.daemon_support import TWISTD, Daemon
from tests.support import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def listening_socket(path: Path) -> socket.socket:
    skt = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    skt.bind(str(path))
    skt.settimeout(15)
    return skt


def test_sd_notify_sends_one_datagram(tmp_path: Path) -> None:
    with listening_socket(tmp_path / "notify") as manager:
        assert sd_notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert manager.recv(4096) == b"READY=1\nSTATUS=ok"
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})


def test_sd_notify_abstract_socket() -> None:
    name = f"portmux-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert manager.recv(100) == b"READY=1"


def test_daemon_reports_ready_reloading_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with listening_socket(path) as manager:
        daemon = Daemon(tmp_path, """
            [[listen]]
            endpoint = "tcp:0:interface=127.0.0.1"
            [[route]]
            name = "echo"
            match = { protocol = "tcpmux", service = "echo" }
            echo = true
            """, env={"NOTIFY_SOCKET": str(path)})
        try:
            ready = manager.recv(4096).decode()
            assert ready.startswith("READY=1\n") and f"MAINPID={daemon.process.pid}" in ready
            assert "STATUS=listening on tcp:0:interface=127.0.0.1" in ready
            daemon.signal(signal.SIGHUP)
            assert manager.recv(4096) == b"RELOADING=1"
            assert manager.recv(4096) == b"READY=1"
            daemon.signal(signal.SIGTERM)
            assert manager.recv(4096) == b"STOPPING=1"
        finally:
            daemon.stop()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None or shutil.which("curl") is None,
                    reason="systemd-socket-activate or curl not installed")
def test_example_units_socket_activation(tmp_path: Path) -> None:
    """The example .socket's FileDescriptorName and the example config, under systemd-socket-activate."""
    socket_unit = (EXAMPLES / "portmux.socket").read_text()
    name = next(line.split("=", 1)[1] for line in socket_unit.splitlines()
                if line.startswith("FileDescriptorName="))
    assert "Type=notify" in (EXAMPLES / "portmux.service").read_text()
    port = free_port()
    log = tmp_path / "portmux.log"
    process = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", f"--fdname={name}",
         "-E", "PYTHONPATH",  # it passes no environment on by default: test this tree's portmux
         *TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(EXAMPLES / "portmux.toml")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # systemd-socket-activate binds, then starts twistd on the first connection
            answer = subprocess.run(["curl", "-sSf", "-m", "20", f"http://127.0.0.1:{port}/portmux/status.json"],
                                    check=False, capture_output=True, timeout=30)
            if answer.returncode != 7 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if answer.returncode != 0:
            process.kill()
            pytest.fail(f"{answer}\n{process.communicate(timeout=10)[0]!r}")
        snapshot = json.loads(answer.stdout)
        assert [route["name"] for route in snapshot["routes"]] == ["status", "echo"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate(timeout=10)
    access = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert any(entry["route"] == "status" and entry["listener"] == f"systemd:domain=INET:name={name}"
               for entry in access), out
