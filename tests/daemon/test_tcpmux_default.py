"""A one-word first line is TCPMUX only when a TCPMUX route names it (issue 10, item 3).

Real clients against `twistd -n portmux`: redis-cli sends an inline command through
the `default` route to a real redis-server, nc sees the bytes reach the backend
unchanged (no `+`), and `portmux connect` exits non-zero with the server's reason
when there is no default.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_daemon import start_portmux
from tests.support import free_port, stop_process, wait_listening

HAVE_REDIS = shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
ECHO_ROUTES = """
[[route]]
name = "help"
match = { protocol = "tcpmux", service = "help" }
help = true

[[route]]
name = "echo"
match = { protocol = "tcpmux", service = "echo" }
echo = true
"""


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    if not HAVE_REDIS:
        pytest.skip("redis-server/redis-cli not installed (Debian: redis-server redis-tools)")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process)
        yield port
    finally:
        stop_process(process)


def _daemon(tmp_path: Path, routes: str) -> Iterator[tuple[int, Path]]:
    config = tmp_path / "portmux.toml"
    config.write_text('[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n' + routes)
    process, port, log = start_portmux(tmp_path, "--config", str(config))
    try:
        yield port, log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


@pytest.fixture
def with_default(tmp_path: Path, redis_port: int) -> Iterator[tuple[int, Path]]:
    routes = ECHO_ROUTES + (
        f'\n[[route]]\nname = "rest"\nmatch = {{ default = true }}\n'
        f'proxy = ["tcp:127.0.0.1:{redis_port}"]\n'
    )
    yield from _daemon(tmp_path, routes)


@pytest.fixture
def without_default(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    yield from _daemon(tmp_path, ECHO_ROUTES)


def _redis_cli(port: int, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                          input=stdin, capture_output=True, check=False, timeout=30)


def _nc(port: int, data: bytes) -> bytes:
    done = subprocess.run(["nc", "-N", "-w", "5", "127.0.0.1", str(port)], input=data,
                          capture_output=True, check=False, timeout=30)
    return done.stdout


def test_redis_cli_inline_command_reaches_redis_through_default(
    with_default: tuple[int, Path], redis_port: int
) -> None:
    port, _ = with_default
    assert _redis_cli(redis_port, "SET", "kept-unless-flushed", "1").stdout.strip() == b"OK"
    piped = _redis_cli(port, "--pipe", stdin=b"FLUSHALL\r\n")  # an inline one-word command
    assert piped.returncode == 0, piped.stderr
    assert b"errors: 0, replies: 1" in piped.stdout  # FLUSHALL's +OK (the ECHO marker is not counted)
    # The line reached redis unchanged: the key is gone (a swallowed line left it).
    assert _redis_cli(redis_port, "DBSIZE").stdout.strip() == b"0"
    # And RESP through the same port still works.
    assert _redis_cli(port, "PING").stdout.strip() == b"PONG"


def test_nc_inline_ping_gets_pong_without_plus(
    with_default: tuple[int, Path]
) -> None:
    port, _ = with_default
    if shutil.which("nc") is None:
        pytest.skip("nc not installed (Debian: netcat-openbsd)")
    assert _nc(port, b"PING\r\n") == b"+PONG\r\n"
    # A TCPMUX route that names the service still answers `+` and takes the line.
    assert _nc(port, b"echo\r\nhello") == b"+\r\nhello"


def test_nc_unknown_name_without_default_gets_minus_line(
    without_default: tuple[int, Path]
) -> None:
    port, _ = without_default
    if shutil.which("nc") is None:
        pytest.skip("nc not installed (Debian: netcat-openbsd)")
    assert _nc(port, b"nosuch\r\n") == b"-unknown service 'nosuch'\r\n"
    assert _nc(port, b"PING\r\n") == b"-unknown service 'ping'\r\n"


def _portmux_connect(port: int, service: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "portmux", "connect", "--timeout", "10", f"127.0.0.1:{port}",
         service],
        input=stdin, capture_output=True, check=False, timeout=60,
    )


def test_portmux_connect_exits_non_zero_with_the_reason(
    without_default: tuple[int, Path]
) -> None:
    port, _ = without_default
    refused = _portmux_connect(port, "nosuch", b"")
    assert refused.returncode != 0
    assert b"unknown service 'nosuch'" in refused.stderr
    assert refused.stdout == b""
    bridged = _portmux_connect(port, "echo", b"hello")
    assert (bridged.returncode, bridged.stdout) == (0, b"hello")


def test_portmux_connect_to_a_name_only_the_default_takes_is_not_accepted(
    with_default: tuple[int, Path]
) -> None:
    port, _ = with_default
    # redis (the default) answers the name line with an error, never `+`.
    done = _portmux_connect(port, "nosuch", b"")
    assert done.returncode != 0
    assert b"nosuch" in done.stderr
