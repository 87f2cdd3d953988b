"""`twistd --uid/--gid` with a control socket (issue 10, item 11).

Run as root, dropping to `nobody`, with the control socket in a root-only temporary
directory: the socket must be bound before the drop (nobody could not create it
later) and handed to nobody; a worker then registers over it and serves a TCPMUX
service; stopping leaves the file behind with one log line, and the next start
replaces it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _nobody() -> Any:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or _nobody() is None,
    reason="needs root (to start twistd with --uid) and a 'nobody' account",
)


def _wait(predicate: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="portmux-uid-"))  # mode 0700, owned by root
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _start_daemon(log: Path, control: Path, cwd: Path) -> subprocess.Popen[bytes]:
    nobody = _nobody()
    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "-l", str(log), "--uid", str(nobody.pw_uid),
         "--gid", str(nobody.pw_gid), "portmux", "--listen", "tcp:0:interface=127.0.0.1",
         "--control", f"unix:{control}"],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _port(log: Path, process: subprocess.Popen[bytes]) -> int:
    def found() -> Any:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
        text = log.read_text() if log.exists() else ""
        return "set uid/gid" in text and re.search(r"listening on .* \(127\.0\.0\.1:(\d+)\)", text)

    return int(_wait(found, "portmux to listen and drop privileges").group(1))


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def _echo(port: int, service: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(service + b"\r\nhello\n")
        got = b""
        while not got.endswith(b"hello\n") and not got.startswith(b"-"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    return got


def test_control_socket_is_bound_before_the_uid_switch(tmp_path: Path, root_only_dir: Path) -> None:
    control = root_only_dir / "control.sock"
    log = tmp_path / "portmux.log"
    daemon = _start_daemon(log, control, tmp_path)
    worker = None
    try:
        port = _port(log, daemon)
        nobody = _nobody()
        assert _uid_of(daemon.pid) == nobody.pw_uid  # it really switched
        info = control.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
            nobody.pw_uid, nobody.pw_gid, 0o600)

        worker = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-l", str(tmp_path / "worker.log"), "portmux-worker",
             "--control", f"unix:{control}", "--match", "protocol=tcpmux,service=echo-h",
             "--factory", "portmux.targets.echo:EchoFactory"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        answer = _wait(lambda: (a := _echo(port, b"echo-h")) != b"-unknown service 'echo-h'\r\n"
                       and a, "the worker's registration")
        assert answer == b"+\r\nhello\n"
    finally:
        if worker is not None:
            _stop(worker)
        status = _stop(daemon)
    assert status in (0, -signal.SIGTERM)  # Twisted re-raises the stopping signal
    text = log.read_text()
    assert "Traceback" not in text and "Unhandled" not in text
    assert sum("cannot remove" in line for line in text.splitlines()) == 1

    # The file left behind (nobody may not unlink in root's directory) is replaced.
    assert control.exists()
    again = _start_daemon(tmp_path / "again.log", control, tmp_path)
    try:
        _port(tmp_path / "again.log", again)
    finally:
        assert _stop(again) in (0, -signal.SIGTERM)
