"""Graceful stop and reload of a real ``twistd portmux``: SIGTERM drains, SIGHUP never touches live connections."""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from portmux.control import _framing as frames
from tests.daemon.daemon_support import Daemon, http_get, start_backend
from tests.support import stop_process


def proxied(backend: int, grace: float = 30.0, extra: str = "") -> str:
    return f"""
    [[listen]]
    endpoint = "tcp:0:interface=127.0.0.1"
    [shutdown]
    grace_period = {grace}
    [[route]]
    name = "web"
    match = {{ protocol = "http" }}
    proxy = ["tcp:127.0.0.1:{backend}"]
    {extra}
    """


def started_request(port: int) -> socket.socket:
    """A connection with its request sent; the answer is read later."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
    return sock


def answer(sock: socket.socket) -> bytes:
    with sock:
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_stops_accepting_and_lets_open_connections_finish(tmp_path: Path) -> None:
    backend, backend_port = start_backend(delay=1.5)
    control = tmp_path / "control.sock"
    daemon = Daemon(tmp_path, proxied(backend_port, extra=f'[control]\nendpoint = "unix:{control}"'))
    try:
        deadline = time.monotonic() + 15  # the control socket is bound just after the listeners
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = socket.socket(socket.AF_UNIX)
        worker.connect(str(control))
        worker.settimeout(10)
        open_now = [started_request(daemon.port) for _ in range(5)]
        time.sleep(0.3)  # attached and waiting for the slow backend
        daemon.signal(signal.SIGTERM)
        daemon.wait_log("draining: 5 open connection(s)")
        assert refused(daemon.port)  # no longer accepting
        worker.sendall(frames.encode({"op": "register", "id": 1,
                                      "match": {"protocol": "tcpmux", "service": "late"}}))
        decoder = frames.FrameDecoder()
        replies = []
        while not replies:
            replies = decoder.feed(worker.recv(4096))
        assert replies[0]["op"] == "error" and replies[0]["error"] == "ShuttingDown"
        answers = [answer(sock) for sock in open_now]
        assert all(a.startswith(b"HTTP/1.0 200 OK") and a.endswith(b"\n") for a in answers)
        assert daemon.process.wait(15) in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
        worker.close()
    finally:
        daemon.stop()
        stop_process(backend)
    assert "drained: every connection finished" in daemon.text()


def test_grace_period_ends_then_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    backend, backend_port = start_backend(delay=60)
    try:
        daemon = Daemon(tmp_path, proxied(backend_port, grace=1.0))
        sock = started_request(daemon.port)
        time.sleep(0.3)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert answer(sock) == b""  # closed at the end of the grace period
        assert 0.8 < time.monotonic() - started < 10
        assert daemon.process.wait(15) in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
        assert "grace period over" in daemon.text() and "closed 1 connection(s)" in daemon.text()

        second = tmp_path / "second"
        second.mkdir()
        daemon = Daemon(second, proxied(backend_port, grace=60.0))
        sock = started_request(daemon.port)
        time.sleep(0.3)
        daemon.signal(signal.SIGTERM)
        daemon.wait_log("draining: 1 open connection(s)")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert answer(sock) == b""
        assert daemon.process.wait(15) in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
        assert time.monotonic() - started < 10
    finally:
        daemon.stop()
        stop_process(backend)


def test_sighup_new_routes_for_new_connections_attached_ones_keep_their_target(tmp_path: Path) -> None:
    old, old_port = start_backend(delay=1.5)
    new, new_port = start_backend()
    daemon = Daemon(tmp_path, proxied(old_port))
    try:
        in_flight = started_request(daemon.port)
        time.sleep(0.3)
        daemon.reconfigure(proxied(new_port).replace('name = "web"', 'name = "web2"'))
        daemon.wait_log("reloaded: 1 routes")
        assert http_get(daemon.port).endswith(f"hello from backend {new_port}\n".encode())
        # the old route is gone from the config, yet its connection is answered by its backend
        assert answer(in_flight).endswith(f"hello from backend {old_port}\n".encode())
        daemon.reconfigure("this is [not toml")
        daemon.wait_log("reload refused, keeping the running config")
        assert http_get(daemon.port).endswith(f"hello from backend {new_port}\n".encode())
    finally:
        daemon.stop()
        stop_process(old)
        stop_process(new)


def test_sighup_adds_and_removes_listeners_without_touching_the_others(tmp_path: Path) -> None:
    backend, backend_port = start_backend(delay=1.5)
    two = proxied(backend_port).replace(
        '[shutdown]', '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.2"\n[shutdown]')
    daemon = Daemon(tmp_path, two)
    try:
        ports = daemon.wait_ports(2)
        kept = ports["tcp:0:interface=127.0.0.1"]
        removed = ports["tcp:0:interface=127.0.0.2"]
        in_flight = started_request(kept)
        time.sleep(0.3)
        three = proxied(backend_port).replace(
            '[shutdown]', '[[listen]]\nendpoint = "tcp:0:interface=127.0.0.3"\n[shutdown]')
        daemon.reconfigure(three)
        daemon.wait_log("reload: stopped listening on tcp:0:interface=127.0.0.2")
        added = daemon.wait_ports(3)["tcp:0:interface=127.0.0.3"]
        assert _refused_at("127.0.0.2", removed)
        with ThreadPoolExecutor(2) as pool:
            on_added = pool.submit(_get_at, "127.0.0.3", added)
            on_kept = pool.submit(http_get, kept)
            assert on_added.result(20).startswith(b"HTTP/1.0 200 OK")
            assert on_kept.result(20).startswith(b"HTTP/1.0 200 OK")
        assert answer(in_flight).startswith(b"HTTP/1.0 200 OK")
    finally:
        daemon.stop()
        stop_process(backend)


def test_sighup_as_soon_as_a_listener_is_logged_reloads_instead_of_killing(tmp_path: Path) -> None:
    """SIGHUP's default disposition ends a process: portmux takes it before it binds (and logs) a port."""
    backend, backend_port = start_backend()
    daemon = Daemon(tmp_path, proxied(backend_port))  # returns once "listening on" is logged
    try:
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reloaded: 1 routes")
        assert daemon.process.poll() is None
        assert http_get(daemon.port).startswith(b"HTTP/1.0 200 OK")
    finally:
        daemon.stop()
        stop_process(backend)


def _refused_at(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _get_at(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
