"""Issue 12 item 1: per-request routing through the HTTP reverse proxy, with real clients.

One twistd portmux in front of real backends (tests/targets/http_backend.py, a
websockets echo): curl sends several URLs on one connection (one connect), each
to its own route; bodies of hundreds of MB stream both ways with portmux's RSS
bounded; hop-by-hop and forwarding headers; 100-continue; a websocket client;
HTTP/2 after TLS termination; HAProxy with ``http-reuse always`` in front; the
PROXY header's address in X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, wait_listening
from tests.targets.http_support import Processes, exchange, rss_kib

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
BIG = 200_000_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import trustme

    root = tmp_path_factory.mktemp("http-proxy")
    ca = trustme.CA()
    ca.issue_cert("app.example").private_key_and_cert_chain_pem.write_to_path(str(root / "cert.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    processes = Processes()
    try:
        one, two = processes.backend("one"), processes.backend("two")
        ws = processes.websocket_echo("ws")
        plain, proxied = free_port(), free_port()
        routes = f"""
name = "demo@N@"
match = {{ protocol = "http", path = "/demo/" }}
proxy = {{ endpoints = ["tcp:127.0.0.1:{one}"], forwarded = "both" }}
[[@R@]]
name = "api@N@"
match = {{ protocol = "http", path = "/api/" }}
proxy = ["tcp:127.0.0.1:{two}"]
[[@R@]]
name = "ws@N@"
match = {{ protocol = "http", path = "/ws/" }}
proxy = ["tcp:127.0.0.1:{ws}"]
[[@R@]]
name = "a@N@"
match = {{ protocol = "http", host = "a.example" }}
proxy = ["tcp:127.0.0.1:{one}"]
[[@R@]]
name = "b@N@"
match = {{ protocol = "http", host = "b.example" }}
proxy = ["tcp:127.0.0.1:{two}"]
[[@R@]]
name = "status@N@"
match = {{ protocol = "http", path = "/portmux/" }}
status = true
"""
        config = f"""
[[listen]]
endpoint = "tcp:{plain}:interface=127.0.0.1"
[[listen]]
endpoint = "tcp:{proxied}:interface=127.0.0.1"
proxy_protocol = true
trusted = ["127.0.0.1/32"]

[[route]]
name = "tls"
match = {{ protocol = "tls" }}
[route.tls]
certificates = ["cert.pem"]
alpn = ["h2", "http/1.1"]
[[route.tls.route]]
{routes.replace("@N@", "-tls").replace("@R@", "route.tls.route")}
[[route]]
{routes.replace("@N@", "").replace("@R@", "route")}
"""
        _, process, log = processes.portmux(root, config)
        wait_listening(proxied, process)
        yield {"port": plain, "proxied": proxied, "pid": process.pid, "log": log, "root": root,
               "ca": str(root / "ca.pem")}
    finally:
        processes.stop()


def curl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tls_url(site: dict[str, Any], path: str) -> list[str]:
    return ["--cacert", site["ca"], "--resolve", f"app.example:{site['port']}:127.0.0.1",
            f"https://app.example:{site['port']}{path}"]


def test_curl_urls_on_one_connection_each_reach_their_route(site: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{site['port']}"
    out = curl("-w", "[%{num_connects}]\n", f"{base}/demo/a", f"{base}/api/b", f"{base}/portmux/",
               f"{base}/demo/c")
    parts = out.split("[")
    assert parts[0].startswith("one /demo/a ")
    assert parts[1].split("\n", 1)[1].startswith("two /api/b ")
    assert "portmux" in parts[2]  # the in-process status page, on the same connection
    assert parts[3].split("\n", 1)[1].startswith("one /demo/c ")
    assert [p[0] for p in parts[1:]] == ["1", "0", "0", "0"]  # one connect for all four
    # The backend connection was kept alive and reused for the second /demo/ request.
    first, last = parts[0], parts[3]
    assert first.split("conn=")[1].split()[0] == last.split("conn=")[1].split()[0]


def test_hop_by_hop_dropped_and_forwarding_added(site: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{site['port']}"
    out = curl("-i", "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: secret", "-H", "TE: trailers",
               "-H", "X-Forwarded-For: 127.9.9.9", f"{base}/demo/h")
    head, body = out.split("\n\n", 1)
    assert "hop=None te=None" in body  # named in Connection, or hop-by-hop: not forwarded
    assert "xff=127.9.9.9, 127.0.0.1 proto=http" in body
    assert 'fwd=for=127.0.0.1;proto=http;host="127.0.0.1:' in body
    assert "x-drop" not in head.lower() and "keep-alive: timeout" not in head.lower()
    assert "xff=None proto=None fwd=None" in curl(f"{base}/api/h")  # not configured there


def test_proxy_header_address_is_the_forwarded_client(site: dict[str, Any]) -> None:
    request = (b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 80\r\n"
               b"GET /demo/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = exchange(site["proxied"], request)
    assert b"xff=127.0.0.7 " in answer and b"for=127.0.0.7;" in answer


def test_large_upload_streams_with_bounded_memory(site: dict[str, Any], tmp_path: Path) -> None:
    # The body lives in tmpfs when there is one: writing 200 MB to disk would leave the
    # kernel writing it back while later (timing-sensitive) tests run.
    shm = Path("/dev/shm")
    directory = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    try:
        _upload(site, directory / "up.bin")
    finally:
        if directory != tmp_path:
            shutil.rmtree(directory, ignore_errors=True)


def _upload(site: dict[str, Any], payload: Path) -> None:
    with payload.open("wb") as f:
        block = hashlib.sha256(b"seed").digest() * 2048
        for _ in range(BIG // len(block)):
            f.write(block)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    size = payload.stat().st_size
    before = rss_kib(site["pid"])
    base = f"http://127.0.0.1:{site['port']}"
    assert curl("-T", str(payload), f"{base}/api/up").strip() == f"two {size} {digest}"
    chunked = curl("-H", "Transfer-Encoding: chunked", "-T", str(payload), f"{base}/api/up")
    assert chunked.strip() == f"two {size} {digest}"
    expect = subprocess.run(["curl", "-sv", "-H", "Expect: 100-continue", "-T", str(payload),
                             f"{base}/api/up"], capture_output=True, text=True, timeout=120, check=False)
    assert "< HTTP/1.1 100 Continue" in expect.stderr and expect.stdout.strip() == f"two {size} {digest}"
    h2 = curl("--http2", "-T", str(payload), *tls_url(site, "/api/up"))
    assert h2.strip() == f"two {size} {digest}"
    assert rss_kib(site["pid"]) - before < 64 * 1024  # never the 200 MB body


def test_large_download_streams_with_bounded_memory(site: dict[str, Any]) -> None:
    before = rss_kib(site["pid"])
    base = f"http://127.0.0.1:{site['port']}"
    out = curl("-o", "/dev/null", "-o", "/dev/null", "-w", "%{size_download} ",
               f"{base}/demo/big/{BIG}", f"{base}/demo/big/{BIG}?chunked")
    assert out.split() == [str(BIG), str(BIG)]
    out = curl("--http2", "-o", "/dev/null", "-w", "%{size_download} %{http_version}",
               *tls_url(site, f"/demo/big/{BIG}"))
    assert out == f"{BIG} 2"
    slow = curl("--limit-rate", "50M", "-o", "/dev/null", "-w", "%{size_download}",
                f"{base}/demo/big/{BIG // 2}")
    assert slow == str(BIG // 2)
    assert rss_kib(site["pid"]) - before < 64 * 1024


def test_head_and_missing_backend_answer_cleanly(site: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{site['port']}"
    head = curl("-I", f"{base}/demo/x")
    assert head.startswith("HTTP/1.1 200") and "Content-Length:" in head


def test_http2_streams_after_termination_each_reach_their_route(site: dict[str, Any]) -> None:
    port = site["port"]
    out = curl("--http2", "-w", "[%{http_version} %{num_connects}]\n",
               "--cacert", site["ca"], "--resolve", f"app.example:{port}:127.0.0.1",
               f"https://app.example:{port}/demo/a", f"https://app.example:{port}/api/b",
               f"https://app.example:{port}/demo/c")
    lines = [line for line in out.splitlines() if line]
    assert lines[0].startswith("one /demo/a ") and "proto=https" in lines[0]
    assert lines[2].startswith("two /api/b ")
    assert lines[4].startswith("one /demo/c ")
    assert [lines[1], lines[3], lines[5]] == ["[2 1]", "[2 0]", "[2 0]"]


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_h2load_many_streams(site: dict[str, Any]) -> None:
    out = subprocess.run(["h2load", "-n", "400", "-c", "2", "-m", "20",
                          f"https://127.0.0.1:{site['port']}/api/x"],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert "400 succeeded" in out and "status codes: 400 2xx" in out


def _websocket(url: str, **options: Any) -> list[str]:
    from websockets.asyncio.client import connect

    async def talk() -> list[str]:
        got = []
        async with connect(url, max_size=2**22, **options) as ws:
            for text in ("one", "two", "x" * 1_000_000):
                await ws.send(text)
                got.append(str(await ws.recv()))
        return got

    return asyncio.run(asyncio.wait_for(talk(), 30))


def test_websocket_upgrade_becomes_a_tunnel(site: dict[str, Any]) -> None:
    got = _websocket(f"ws://127.0.0.1:{site['port']}/ws/chat")
    assert got[:2] == ["ws:/ws/chat:one", "ws:/ws/chat:two"] and len(got[2]) == 1_000_000 + 12
    context = ssl.create_default_context(cafile=site["ca"])
    context.set_alpn_protocols(["http/1.1"])
    got = _websocket(f"wss://127.0.0.1:{site['port']}/ws/tls", ssl=context, server_hostname="app.example")
    assert got[:2] == ["ws:/ws/tls:one", "ws:/ws/tls:two"] and len(got[2]) == 1_000_000 + 11


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
def test_haproxy_with_http_reuse_always_in_front(site: dict[str, Any], tmp_path: Path) -> None:
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f
    bind 127.0.0.1:{front}
    default_backend portmux
backend portmux
    http-reuse always
    server p 127.0.0.1:{site['port']} maxconn 1
""")
    processes = Processes()
    try:
        processes.start(["haproxy", "-f", str(config), "-db"], front)
        answers = []
        for i in range(6):
            host = "a.example" if i % 2 == 0 else "b.example"
            answers.append(curl("-H", f"Host: {host}", f"http://127.0.0.1:{front}/x{i}"))
        for i, answer in enumerate(answers):
            assert answer.startswith(("one " if i % 2 == 0 else "two ") + f"/x{i} ")
        # maxconn 1 and http-reuse always: HAProxy sent all six over one portmux connection.
        # No request was refused as misdirected (421). A whole word: the log's port
        # numbers (random, e.g. 34215) hold "421" now and then.
        log = site["log"].read_text()
        assert re.search(r"\b421\b", log) is None, log
    finally:
        processes.stop()
