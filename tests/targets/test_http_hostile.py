"""Issue 12 item 3: hostile HTTP is refused, never passed on ambiguously.

The classic request-smuggling vectors go to a real portmux whose route proxies per
request to a recording backend on a real socket (tests/targets/http_backend.py
appends every request line it parses to a file).  Each vector is sent both as a
connection's first request (which the sniffer classifies) and after a good request
on a kept-alive connection (which the hardened channel parses); each must be
refused with 400 and the backend must see only the good requests — never the
smuggled one, never one request as two.  Oversized heads get 431, bodies over the
route's max_body 413, and heads that dawdle 408; each refusal is one log line.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.targets.http_support import Processes, exchange

GOOD = b"GET /app/good HTTP/1.1\r\nHost: h\r\n\r\n"
SMUGGLED = b"GET /app/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"

VECTORS: dict[str, bytes] = {
    "CL.TE": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "TE.CL": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Length: 4\r\n\r\n5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
    "duplicate differing CL": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
                               b"Content-Length: 41\r\n\r\n" + SMUGGLED),
    "duplicate equal CL": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
                           b"Content-Length: 0\r\n\r\n" + SMUGGLED),
    "CL list": b"POST /app/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 41\r\n\r\n" + SMUGGLED,
    "CL sign": b"POST /app/a HTTP/1.1\r\nHost: h\r\nContent-Length: +0\r\n\r\n" + SMUGGLED,
    "TE xchunked": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n"
                    b"Content-Length: 0\r\n\r\n" + SMUGGLED),
    "TE space before colon": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n"
                              b"Content-Length: 0\r\n\r\n" + SMUGGLED),
    "TE chunked, identity": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n"
                             b"\r\n0\r\n\r\n" + SMUGGLED),
    "TE twice": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "obs-fold TE": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nX-Pad: x\r\n Transfer-Encoding: chunked\r\n"
                    b"Content-Length: 0\r\n\r\n" + SMUGGLED),
    "obs-fold": b"GET /app/a HTTP/1.1\r\nHost: h\r\nX-Long: a\r\n\tb\r\n\r\n" + SMUGGLED,
    "bare LF in head": b"GET /app/a HTTP/1.1\r\nHost: h\nX: y\r\n\r\n" + SMUGGLED,
    "bare CR in head": b"GET /app/a HTTP/1.1\r\nHost: h\rX: y\r\n\r\n" + SMUGGLED,
    "bad chunk size": (b"POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "NUL in header": b"GET /app/a HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n" + SMUGGLED,
}


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    record = root / "record.txt"
    record.touch()
    processes = Processes()
    try:
        backend = processes.backend("rec", record)
        port, _, log = processes.portmux(root, f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
[sniff]
preamble_timeout = 1.0
preamble_max_bytes = 8192

[[route]]
name = "app"
match = {{ protocol = "http", path = "/app/" }}
proxy = {{ endpoints = ["tcp:127.0.0.1:{backend}"], max_body = 1000 }}
""")
        yield {"port": port, "record": record, "log": log}
    finally:
        processes.stop()


def recorded(front: dict[str, Any]) -> list[str]:
    return Path(front["record"]).read_text().splitlines()


def status_of(answer: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3})", answer)]


@pytest.mark.parametrize("name", list(VECTORS))
@pytest.mark.parametrize("position", ["first", "after a good request"])
def test_smuggling_vector_refused_and_never_two_requests(front: dict[str, Any], name: str, position: str) -> None:
    before = recorded(front)
    prefix = GOOD if position != "first" else b""
    answer = exchange(front["port"], prefix + VECTORS[name])
    statuses = status_of(answer)
    expected_good = [200] if prefix else []
    assert statuses == [*expected_good, 400], (name, answer[-300:])
    assert b"smuggled" not in answer
    new = recorded(front)[len(before):]
    assert new == (["GET /app/good HTTP/1.1"] if prefix else []), (name, new)


def test_each_refusal_is_one_log_line(front: dict[str, Any]) -> None:
    log = Path(front["log"])
    before = log.read_text().count("refused")
    exchange(front["port"], GOOD + VECTORS["CL.TE"])
    time.sleep(0.2)
    assert log.read_text().count("refused") == before + 1


def test_oversized_head_431(front: dict[str, Any]) -> None:
    big = b"X-Big: " + b"a" * 9000 + b"\r\n"
    first = exchange(front["port"], b"GET /app/a HTTP/1.1\r\nHost: h\r\n" + big + b"\r\n")
    later = exchange(front["port"], GOOD + b"GET /app/a HTTP/1.1\r\nHost: h\r\n" + big + b"\r\n")
    many = exchange(front["port"], GOOD + b"GET /app/a HTTP/1.1\r\nHost: h\r\n"
                    + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(1500)) + b"\r\n")
    assert status_of(first)[-1] == 431
    assert status_of(later) == [200, 431]
    assert status_of(many) == [200, 431]


def test_body_over_max_body_413_and_never_forwarded(front: dict[str, Any]) -> None:
    before = recorded(front)
    declared = exchange(front["port"], b"POST /app/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n"
                        + b"x" * 5000)
    chunked = exchange(front["port"], b"POST /app/up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"3e8\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n")
    small = exchange(front["port"], b"POST /app/up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n"
                     b"Connection: close\r\n\r\n0123456789")
    assert status_of(declared) == [413]
    assert status_of(chunked)[-1] == 413
    assert status_of(small) == [200] and b"rec 10 " in small
    new = recorded(front)[len(before):]
    assert new.count("POST /app/up HTTP/1.1") <= 2  # the chunked one may have started; never completed twice


def test_slow_head_408(front: dict[str, Any]) -> None:
    for prefix in (b"", GOOD):
        with socket.create_connection(("127.0.0.1", front["port"]), timeout=10) as sock:
            sock.sendall(prefix + b"GET /app/slow HTTP/1.1\r\nHost: h\r\n")
            started = time.monotonic()
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            waited = time.monotonic() - started
        statuses = status_of(b"".join(chunks))
        assert statuses[-1] == 408, (prefix, chunks)
        assert 0.5 < waited < 5
