"""``processes = 2``: a kept-alive connection's later request for a worker's URL prefix reaches the worker.

Real ``twistd portmux`` (parent + child on SO_REUSEPORT twins) with a control socket,
an in-process resource route (``/s/``, answering with the serving process's pid) and
a real worker process registering ``http://+/w/`` (portmux.worker.serve_site, as
tests/worker/test_http_prefixes.py).  curl sends ``/s/``, then ``/w/``, then ``/s/``
again on one connection (``Re-using existing connection``): the first is answered by
whichever process accepted, the second by the worker — never 421 — and the third by
the parent, which the connection moved to.  Repeated until both processes accepted
some.  A raw socket pipelines five requests (bodies included) in one write: all are
answered, in order.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon.group_support import registered, wait_for
from tests.daemon.test_group_keepalive import responses

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))
WORKER = ROOT / "tests" / "worker" / "http_worker.py"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(TWISTD) and shutil.which("curl")), reason="needs twistd and curl",
)
STARTED = re.compile(r"process 2 of 2 started \(pid (\d+)\)")
CHILD_LISTENING = re.compile(r"\[process 2\] .*portmux listening on inherited")
ROUNDS = 40
PAGE = '''
import os
from twisted.web.resource import Resource


class PidPage(Resource):
    isLeaf = True

    def render(self, request):
        body = request.content.read() if request.content is not None else b""
        return f"static pid={os.getpid()} {request.path.decode()} {len(body)}\\n".encode()
'''








def pipelined(port: int, data: bytes) -> bytes:
    """Write ``data`` at once on a raw socket; read until the server closes (the last asks it to)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_kept_alive_connection_reaches_the_worker_from_either_process(
    tmp_path: Path, started: list[subprocess.Popen[bytes]],
) -> None:
    (tmp_path / "keepalive_page.py").write_text(PAGE)
    control = tmp_path / "control.sock"
    config = tmp_path / "portmux.toml"
    config.write_text(
        "processes = 2\n"
        '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
        f'[control]\nendpoint = "unix:{control}"\n'
        '[[route]]\nname = "static"\nmatch = { protocol = "http", path = "/s/" }\n'
        'resource = "keepalive_page:PidPage"\n'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    log = tmp_path / "portmux.log"
    started.append(subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    parent = started[0].pid
    text = lambda: log.read_text() if log.exists() else ""
    port = int(wait_for(lambda: re.search(r"portmux listening on tcp:0\S* \(127\.0\.0\.1:(\d+)\)", text()),
                        "the port").group(1))
    child = int(wait_for(lambda: STARTED.search(text()), "the child").group(1))
    wait_for(lambda: CHILD_LISTENING.search(text()), "the child listening")
    wait_for(control.exists, "the control socket")

    worker = subprocess.Popen([sys.executable, str(WORKER), str(control), "W", "http://+/w/"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    started.append(worker)  # type: ignore[arg-type]
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == b"registered"
    wait_for(lambda: registered(control), "the registration")
    time.sleep(0.3)  # the add reaches the child over its channel

    base = f"http://127.0.0.1:{port}"
    first_by: dict[int, int] = {}
    for number in range(ROUNDS):
        done = subprocess.run(
            ["curl", "-sSv", "--max-time", "20", "-w", "[%{http_code} %{num_connects}]\n",
             f"{base}/s/{number}", f"{base}/w/{number}", f"{base}/s/{number}/again"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("Re-using existing connection") == 2, done.stderr
        lines = done.stdout.splitlines()
        served = re.fullmatch(r"static pid=(\d+) /s/\d+ 0", lines[0])
        assert served is not None, lines
        first_by[int(served.group(1))] = first_by.get(int(served.group(1)), 0) + 1
        assert lines[1] == "[200 1]", lines
        assert lines[2:4] == [f"W pid={worker.pid} /w/{number}", "[200 0]"], lines
        # The rest of the connection is the parent's, whichever process accepted it.
        assert lines[4:] == [f"static pid={parent} /s/{number}/again 0", "[200 0]"], lines
    assert set(first_by) == {parent, child}, first_by  # both processes accepted some

    host = b"Host: site.example\r\n"
    firsts = set()
    for number in range(20):
        got = pipelined(port, (
            b"GET /s/a HTTP/1.1\r\n" + host + b"\r\n"
            b"POST /w/b HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhello"
            b"GET /s/c HTTP/1.1\r\n" + host + b"\r\n"
            b"POST /w/d HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /w/e HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n"
        ))
        found, rest = responses(got)
        assert rest == b"", rest[:200]
        assert [status for status, _ in found] == [200] * 5, found
        first = re.fullmatch(rb"static pid=(\d+) /s/a 0\n", found[0][1])
        assert first is not None, found
        firsts.add(int(first.group(1)))
        assert [body for _, body in found[1:]] == [
            f"W pid={worker.pid} /w/b body=hello\n".encode(), f"static pid={parent} /s/c 0\n".encode(),
            f"W pid={worker.pid} /w/d body=abc\n".encode(), f"W pid={worker.pid} /w/e\n".encode(),
        ], (number, found)
    assert re.search(r"\b421\b", text()) is None, text()[-3000:]
    assert firsts == {parent, child}, firsts
