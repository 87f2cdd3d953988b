"""A real ``twistd -n portmux`` process driven by a test, and small real peers for it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support import free_port, wait_listening

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
LISTENING = re.compile(rb"portmux listening on (\S+) \(127\.\d+\.\d+\.\d+:(\d+)\)")


class Daemon:
    """``twistd -n portmux --config FILE`` in ``directory``; its log is ``portmux.log`` there."""

    def __init__(self, directory: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.config = directory / "portmux.toml"
        self.config.write_text(textwrap.dedent(config))
        self.log = directory / "portmux.log"
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-l", str(self.log), "portmux", "--config", str(self.config)],
            cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.ports = self.wait_ports(1)
        self.port = next(iter(self.ports.values()))

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ports(self, count: int, limit: float = 20.0) -> dict[str, int]:
        """Endpoint → port of the listeners reported in the log, once ``count`` are."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            found = {m.group(1).decode(): int(m.group(2))
                     for m in LISTENING.finditer(self.log.read_bytes() if self.log.exists() else b"")}
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise AssertionError(f"portmux exited: {self.process.stdout.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.05)
        raise AssertionError(f"portmux did not report {count} listener(s):\n{self.text()}")

    def wait_log(self, needle: str, count: int = 1, limit: float = 15.0) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(needle) >= count:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged {count} time(s):\n{self.text()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def reconfigure(self, config: str) -> None:
        """Write a new config and SIGHUP; waits for the reload (or its refusal) to be logged."""
        before = self.text().count("reload")
        self.config.write_text(textwrap.dedent(config))
        self.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while self.text().count("reload") <= before and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


BACKEND = r"""
import socket, sys, threading, time
delay = float(sys.argv[2])
status = sys.argv[3].encode()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(512)
def serve(conn):
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        time.sleep(delay)
        body = b"hello from backend " + sys.argv[1].encode() + b"\n"
        conn.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def start_backend(delay: float = 0.0, port: int | None = None,
                  status: str = "200 OK") -> tuple[subprocess.Popen[bytes], int]:
    """A threaded HTTP/1.0 backend answering every request with ``status`` after ``delay`` seconds."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-c", BACKEND, str(port), str(delay), status],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, process)
    return process, port


def http_get(port: int, path: str = "/", timeout: float = 20.0) -> bytes:
    """One HTTP/1.0 request over a plain socket; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def byte_counts() -> bool:
    """Whether portmux reports byte counts: they come from its Twisted fast paths (portmux._twisted)."""
    from portmux import _twisted

    return _twisted.FAST_PATHS and os.environ.get(_twisted.ENV_SWITCH, "") in ("", "0")


def admin_config(tmp_path: Path, backend_port: int, dead_port: int, interval: float) -> str:
    """A config with the status page at /admin, a health-checked proxy (one backend dead)
    and a TLS route nesting another: what the metrics and status-page tests observe."""
    return f"""
        [[listen]]
        endpoint = "tcp:0:interface=127.0.0.1"
        [[route]]
        name = "admin"
        match = {{ protocol = "http", path = "/admin" }}
        status = true
        [[route]]
        name = "web"
        match = {{ protocol = "http" }}
        [route.proxy]
        endpoints = ["tcp:127.0.0.1:{backend_port}", "tcp:127.0.0.1:{dead_port}"]
        health_check = {{ interval = {interval}, fall = 1, rise = 1 }}
        [[route]]
        name = "https"
        match = {{ protocol = "tls" }}
        [route.tls]
        certificates = ["{tmp_path / 'site.pem'}"]
        [[route.tls.route]]
        name = "site"
        match = {{ protocol = "http" }}
        proxy = ["tcp:127.0.0.1:{backend_port}"]
        """
