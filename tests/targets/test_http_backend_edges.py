"""What a backend may answer, through the per-request proxy: a raw socket backend on loopback.

A body delimited by the connection's close, 204 and 304 without bodies, a 103 before
the answer, and malformed answers (refused with 502 and one log line, never passed on).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port
from tests.targets.http_support import Processes

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

RAW_BACKEND = r"""
import socket, sys, threading
ANSWERS = {
    b"/close": (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 100000, True),
    b"/nocontent": (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False),
    b"/notmodified": (b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n", False),
    b"/hints": (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    b"/garbage": (b"HTTP/1.1 2x0 Nope\r\n\r\n", True),
    b"/badlength": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", True),
}
def serve(conn):
    with conn:
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
            while b"\r\n\r\n" in data:
                head, data = data.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1]
                answer, close = ANSWERS.get(path, (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False))
                conn.sendall(answer)
                if close:
                    return
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("edges")
    processes = Processes()
    try:
        backend = free_port()
        processes.start([sys.executable, "-c", RAW_BACKEND, str(backend)], backend)
        port, _, log = processes.portmux(root, f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
[[route]]
name = "raw"
match = {{ protocol = "http" }}
proxy = ["tcp:127.0.0.1:{backend}"]
""")
        yield {"port": port, "log": log}
    finally:
        processes.stop()


def curl(*args: str) -> str:
    result = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_close_delimited_body_is_relayed_whole(front: dict[str, Any]) -> None:
    out = curl("-w", "|%{http_code} %{size_download}", f"http://127.0.0.1:{front['port']}/close")
    assert out.endswith("|200 100000") and out.startswith("zzz")


def test_bodiless_answers_and_early_hints(front: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{front['port']}"
    out = curl("-w", "|%{http_code} %{size_download} %{num_connects}\n",
               f"{base}/nocontent", f"{base}/notmodified", f"{base}/hints")
    assert out.splitlines() == ["|204 0 1", "|304 0 0", "ok|200 2 0"]


def test_malformed_answers_are_502_and_logged(front: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{front['port']}"
    for path in ("/garbage", "/badlength"):
        out = curl("-w", "|%{http_code}", f"{base}{path}")
        assert out.endswith("|502") and "backend unreachable" in out
    text = Path(front["log"]).read_text()
    assert text.count("malformed response") == 2
