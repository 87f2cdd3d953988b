"""Helpers shared by the integration tests: free ports, readiness, a throwaway sshd."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    """Wait (bounded) until ``port`` accepts connections; fail if ``process`` exits."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process we started (by its PID), killing it if it lingers."""
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_sshd(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's sshd on a free loopback port, keys and config in ``directory``.

    Root may log in with ``directory/"user"`` (an ed25519 key made here).
    """
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(directory / name)], check=True)
    shutil.copy(directory / "user.pub", directory / "authorized_keys")
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {directory / 'host'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {directory / 'sshd.pid'}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    with open(directory / "sshd.log", "wb") as log:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port, process)
    except RuntimeError:
        stop_process(process)
        raise
    return process, port


def nc(port: int, data: bytes, expect: bytes, host: str = "127.0.0.1",
       limit: float = 10.0) -> bytes:
    """Talk through real nc, keeping our side open until ``expect`` arrives (or ``limit`` seconds)."""
    proc = subprocess.Popen(["nc", "-N", host, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.flush()
    got = b""
    end = time.monotonic() + limit
    while expect not in got and time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            got += chunk
    proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    got += proc.stdout.read()
    proc.stdout.close()
    return got


def fd_count() -> int:
    """This process's open file descriptors."""
    return len(os.listdir("/proc/self/fd"))


async def turn(seconds: float = 0.01) -> None:
    """Let the (global) reactor run for ``seconds``."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def wait_until(condition: Any, limit: float = 5.0) -> None:
    """Let the reactor run until ``condition()`` is true, or fail after ``limit`` seconds."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await turn()
    raise AssertionError("condition not reached")


def log_lines(test: Any) -> list[str]:
    """Every log line emitted from now until ``test``'s cleanup, formatted, in order."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observer(event: Any) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines
