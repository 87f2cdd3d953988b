"""Real processes for the per-request HTTP tests: backends, a websocket echo, twistd portmux."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_port, stop_process, wait_listening

HERE = Path(__file__).resolve().parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
LISTENING = re.compile(rb"portmux listening on .* \(127\.0\.0\.1:(\d+)\)")

WS_ECHO = """
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for message in ws:
        await ws.send(f"{sys.argv[2]}:{ws.request.path}:{message}")
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=2**22):
        await asyncio.Future()
asyncio.run(main())
"""


class Processes:
    """Processes a test started, stopped by PID at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def backend(self, name: str, record: Path | None = None) -> int:
        """tests/targets/http_backend.py on a free port; its port."""
        port = free_port()
        argv = [sys.executable, str(HERE / "http_backend.py"), str(port), name]
        if record is not None:
            argv.append(str(record))
        self.start(argv, port)
        return port

    def websocket_echo(self, name: str) -> int:
        port = free_port()
        self.start([sys.executable, "-c", WS_ECHO, str(port), name], port)
        return port

    def start(self, argv: list[str], port: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        wait_listening(port, process)
        return process

    def portmux(self, directory: Path, config: str) -> tuple[int, subprocess.Popen[bytes], Path]:
        """twistd portmux with ``config`` (whose listener is tcp:0 on loopback): (port, process, log)."""
        path = directory / "portmux.toml"
        path.write_text(config)
        log = directory / "portmux.log"
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(path)],
            cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = LISTENING.search(log.read_bytes() if log.exists() else b"")
            if found:
                return int(found.group(1)), process, log
            if process.poll() is not None:
                raise AssertionError(f"portmux exited: {log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        raise AssertionError("portmux did not report its port")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            stop_process(process)


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """A process's peak (VmHWM) or current (VmRSS) resident set, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def exchange(port: int, data: bytes, timeout: float = 10.0, wait_close: bool = True) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``); everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if not wait_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)
