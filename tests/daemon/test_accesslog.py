"""The access log of a real ``twistd portmux``: one line per connection, text and JSON, SIGUSR1 reopen."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.daemon_support import Daemon, byte_counts, http_get, start_backend
from tests.support import free_port, stop_process

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.fixture
def backend() -> Iterator[int]:
    process, port = start_backend()
    yield port
    stop_process(process)


def config(backend: int, log: Path, fmt: str, tls_dir: Path | None = None) -> str:
    tls = ""
    if tls_dir is not None:
        tls = f"""
        [[route]]
        name = "https"
        match = {{ protocol = "tls" }}
        [route.tls]
        certificates = ["{tls_dir / 'site.pem'}"]
        [[route.tls.route]]
        name = "site"
        match = {{ protocol = "http" }}
        proxy = ["tcp:127.0.0.1:{backend}"]
        """
    return f"""
    [[listen]]
    endpoint = "tcp:0:interface=127.0.0.1"
    [access_log]
    path = "{log}"
    format = "{fmt}"
    [[route]]
    name = "web"
    match = {{ protocol = "http" }}
    proxy = {{ endpoints = ["tcp:127.0.0.1:{free_port()}", "tcp:127.0.0.1:{backend}"] }}
    [[route]]
    name = "echo"
    match = {{ protocol = "tcpmux", service = "echo" }}
    echo = true
    {tls}
    """


def read_lines(path: Path, count: int, limit: float = 10.0) -> list[str]:
    """The log's lines once there are ``count`` (it is flushed once a second)."""
    deadline = time.monotonic() + limit
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{len(lines)} of {count} lines: {lines}")


def test_json_lines_describe_each_connection(tmp_path: Path, backend: int) -> None:
    import trustme

    ca = trustme.CA()
    ca.issue_cert("site.test").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    access = tmp_path / "access.jsonl"
    daemon = Daemon(tmp_path, config(backend, access, "json", tls_dir=tmp_path))
    try:
        body = subprocess.run(["curl", "-sS", "-m", "10", f"http://127.0.0.1:{daemon.port}/a/b?c"],
                              capture_output=True, check=True).stdout
        assert body.startswith(b"hello from backend")
        out = subprocess.run(
            ["curl", "-sS", "-m", "10", "--cacert", str(tmp_path / "ca.pem"),
             "--resolve", f"site.test:{daemon.port}:127.0.0.1", f"https://site.test:{daemon.port}/x"],
            capture_output=True, check=True).stdout
        assert out.startswith(b"hello from backend")
        nc = subprocess.run(["nc", "-N", "127.0.0.1", str(daemon.port)], check=False, input=b"nosuch\r\n",
                            capture_output=True, timeout=10)
        assert nc.stdout.startswith(b"-")
        lines = [json.loads(line) for line in read_lines(access, 5)]
    finally:
        daemon.stop()
    requests = [line for line in lines if line["end"].startswith("request_")]
    web, tls, refused = [line for line in lines if not line["end"].startswith("request_")]
    # Per-request routing: one more line per HTTP request, with its own route and status.
    assert [(r["route"], r["path"], r["end"]) for r in requests] == [
        ("web", "/a/b", "request_200"), ("https/site", "/x", "request_200")]
    assert requests[0]["backend"] == f"tcp:127.0.0.1:{backend}"
    assert web["route"] == "web" and web["target"] == "proxy"
    assert web["backend"] == f"tcp:127.0.0.1:{backend}"  # the first backend is a closed port: failover
    assert web["protocol"] == "http" and web["host"] == "127.0.0.1"
    assert web["path"] == "/a/b" and web["client"].startswith("127.0.0.1:")
    assert web["listener"] == "tcp:0:interface=127.0.0.1"
    if byte_counts():
        assert web["bytes_in"] > 50
        assert web["bytes_out"] == len(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n") + len(body)
        assert web["end"] in ("client_close", "backend_close")
        assert tls["bytes_out"] > 1000  # the certificate too
        assert refused["bytes_out"] == len(nc.stdout)
    else:  # public Twisted API only: no TCP_INFO at close
        assert web["bytes_in"] is None and web["end"] == "closed"
    assert web["sniff_seconds"] >= 0 and web["connect_seconds"] >= 0
    assert web["duration"] >= web["sniff_seconds"]
    assert web["time"].endswith("Z")
    assert tls["route"] == "https/site" and tls["sni"] == "site.test" and tls["path"] == "/x"
    assert tls["backend"] == f"tcp:127.0.0.1:{backend}"
    assert refused["route"] is None and refused["end"] == "unknown_service"
    assert refused["service"] == "nosuch"


def test_text_lines_and_reopen_on_sigusr1(tmp_path: Path, backend: int) -> None:
    access = tmp_path / "access.log"
    daemon = Daemon(tmp_path, config(backend, access, "text"))
    try:
        assert http_get(daemon.port, "/first").endswith(b"\n")
        read_lines(access, 2)  # the request's line, then the connection's
        access.rename(tmp_path / "access.log.1")  # what logrotate does
        daemon.signal(signal.SIGUSR1)
        daemon.wait_log("access log")
        answer = http_get(daemon.port, "/second")
        second = read_lines(access, 2)
    finally:
        daemon.stop()
    first = (tmp_path / "access.log.1").read_text().splitlines()
    assert len(first) == 2 and all("path=/first" in line for line in first)
    assert " request_200 " in first[0]
    assert len(second) == 2 and all("path=/second" in line for line in second)
    fields = second[1].split()
    assert fields[0].endswith("Z") and fields[1].startswith("127.0.0.1:")
    assert fields[2:4] == ["tcp:0:interface=127.0.0.1", "http"]
    assert fields[4] == f"web>proxy/tcp:127.0.0.1:{backend}"
    assert len(fields[5].split("/")) == 3  # sniff/connect/total ms
    if byte_counts():
        assert fields[6].split("/")[1] == str(len(answer))  # bytes out: the backend's answer
        # local_close: the route forwards HTTP per request, so portmux's HTTP server ends
        # the HTTP/1.0 connection itself after the answer (closing, not half-closing).
        assert fields[7] in ("client_close", "backend_close", "local_close")
