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
    assert b"<h1>portmux</h1>" in page.stdout and b"status.js" in page.stdout  # the live page
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


def _twistd_exit(args: list[str], tmp_path: Path, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*TWISTD, "-n", "--pidfile=", "portmux", *args], cwd=tmp_path,
                          check=False, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_bad_listen_endpoint_is_one_line_and_non_zero(tmp_path: Path) -> None:
    done = _twistd_exit(["--listen", "tpc:1234"], tmp_path)
    assert done.returncode != 0
    assert b"--listen 'tpc:1234': Unknown endpoint type: 'tpc'" in done.stdout + done.stderr
    assert b"Traceback" not in done.stderr + done.stdout


def test_address_in_use_is_one_line_and_non_zero(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _twistd_exit(["--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert b"Address already in use" in out and b"portmux: cannot listen on" in out
    assert b"Traceback" not in out


def test_systemd_endpoint_without_inherited_socket_is_explained(tmp_path: Path) -> None:
    done = _twistd_exit(["--listen", "systemd:domain=INET:name=web"], tmp_path,
                        env={"LISTEN_FDS": "0"})
    assert done.returncode != 0
    assert b"systemd passed no sockets" in done.stdout + done.stderr
    assert b"Traceback" not in done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None or shutil.which("curl") is None,
                    reason="systemd-socket-activate or curl not installed")
@pytest.mark.parametrize(("names", "endpoint"), [
    (None, "systemd:domain=INET:index=0"),
    ("web", "systemd:domain=INET:name=web"),
])
def test_systemd_socket_activation_with_and_without_names(
        tmp_path: Path, names: str | None, endpoint: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", "PYTHONPATH"]  # this tree
    if names:
        command.append(f"--fdname={names}")
    log = tmp_path / "portmux.log"
    process = subprocess.Popen(
        [*command, *TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--listen", endpoint],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        answer = subprocess.CompletedProcess[bytes]([], 1, b"", b"")
        while time.monotonic() < deadline:
            # systemd-socket-activate starts twistd on the first connection; curl waits.
            answer = subprocess.run(["curl", "-sf", "-m", "20", f"http://127.0.0.1:{port}/status.json"],
                                    check=False, capture_output=True, timeout=30)
            if answer.returncode == 0:
                break
            time.sleep(0.2)
        assert answer.returncode == 0, (answer, log.read_text() if log.exists() else "")
        assert "routes" in json.loads(answer.stdout)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_inherited_sockets_follow_sd_listen_fds_rules() -> None:
    from portmux.daemon.systemd import inherited_sockets

    none = inherited_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, pid=2)
    assert none.descriptors == ()
    unnamed = inherited_sockets({"LISTEN_PID": "7", "LISTEN_FDS": "2"}, pid=7)
    assert unnamed.descriptors == (3, 4) and unnamed.by_index(1) == 4
    named = inherited_sockets({"LISTEN_PID": "7", "LISTEN_FDS": "2",
                               "LISTEN_FDNAMES": "web:admin"}, pid=7)
    assert named.by_name("admin") == 4
    with pytest.raises(KeyError, match="no inherited socket named 'x'"):
        named.by_name("x")
    with pytest.raises(KeyError, match="at index 2"):
        unnamed.by_index(2)
