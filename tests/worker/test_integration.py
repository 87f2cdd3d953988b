"""Done-means: real portmux and worker processes, real curl and nc, SIGKILL, clean refusal."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portmux.control.cli import query
from tests.support import nc

TWISTD = str(Path(sys.executable).with_name("twistd"))
pytestmark = pytest.mark.skipif(
    not (os.path.exists(TWISTD) and shutil.which("curl") and shutil.which("nc")),
    reason="needs twistd, curl and nc",
)
DEADLINE = 20.0


def wait_for(predicate, what: str, deadline: float = DEADLINE):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Processes:
    """Starts processes and kills exactly those, by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", *args],
            cwd=self.tmp, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def run(*argv: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(argv, check=False, input=stdin, capture_output=True, timeout=15).stdout


def nc_exchange(port: int, data: bytes, expect: bytes) -> bytes:
    """Talk through real nc until ``expect`` arrives (or 10 s)."""
    return nc(port, data, expect)


def registered(control: Path) -> set[str]:
    try:
        return {g["name"] for g in query(str(control), 2.0)["registered"]}
    except (OSError, ValueError):
        return set()


def test_workers_register_serve_die_and_are_refused(processes: Processes, tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    (tmp_path / "portmux.toml").write_text(
        '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        f'[control]\nendpoint = "unix:{control}"\n'
    )
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("served by the worker\n")

    _, mux_log = processes.start("portmux", "portmux", "--config", "portmux.toml")
    port = int(wait_for(
        lambda: re.search(r"\(127\.0\.0\.1:(\d+)\)", mux_log.read_text()), "portmux port"
    ).group(1))
    wait_for(control.exists, "the control socket")
    assert control.stat().st_mode & 0o777 == 0o600

    common = ("portmux-worker", "--control", f"unix:{control}")
    web, _ = processes.start("web", *common, "--match", "protocol=http,host=*,path=/",
                             "web", "--path", str(site))
    echo_handoff, _ = processes.start(
        "echo-h", *common, "--match", "protocol=tcpmux,service=echo-h",
        "--factory", "portmux.targets.echo:EchoFactory")
    echo_proxy, _ = processes.start(  # the deprecated protocol-1 text still registers
        "echo-p", *common, "--mode", "proxy", "--address", "tcpmux:echo-p",
        "--factory", "portmux.targets.echo:EchoFactory")
    names = {"handoff:protocol=http,host=*,path=/", "handoff:protocol=tcpmux,service=echo-h",
             "proxy:protocol=tcpmux,service=echo-p"}
    wait_for(lambda: registered(control) >= names, "three registrations")

    url = f"http://127.0.0.1:{port}/index.html"
    assert run("curl", "-s", "-m", "10", url) == b"served by the worker\n"
    for service in ("echo-h", "echo-p"):
        out = nc_exchange(port, f"{service}\r\nhello\n".encode(), b"hello\n")
        assert out == b"+\r\nhello\n", (service, out)

    for proc in (web, echo_handoff, echo_proxy):
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    wait_for(lambda: not registered(control) & names, "routes dropped")

    started = time.monotonic()
    head = run("curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert head == b"404"
    for service in ("echo-h", "echo-p"):
        out = run("nc", "-N", "127.0.0.1", str(port), stdin=f"{service}\r\nhello\n".encode())
        assert out.startswith(b"-") and service.encode() in out, out
    assert time.monotonic() - started < 15  # no hang (bounded by curl/nc timeouts anyway)
