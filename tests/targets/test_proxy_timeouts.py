"""Bug 4 and the proxy's timeouts after classification, over real loopback sockets:
half-closed pairs whose peer never reads nor closes are closed (client_fin/server_fin),
quiet tunnels are closed, a silent HTTP backend gets the client a 504, and a backend's
reset reaches a raw-TCP client as a reset."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any

from twisted.internet import reactor, task, threads
from twisted.trial.unittest import TestCase

from portmux.core.limits import Timeouts
from portmux.core.mux import Multiplexer
from portmux.targets.proxy import ProxyTarget

RAW = b"\x00\x01raw bytes\n"  # no probe matches: the default route
REQUEST = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"


def open_fds() -> int:
    """Socket descriptors open in this process (other fds come and go with the test runner)."""
    return sum(1 for name in fd_names() if name.startswith("socket:"))


def fd_names() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sorted(names)


class SilentBackend:
    """A listening socket that never accepts: the kernel completes connects, nobody reads or closes."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(512)
        self.port = self.socket.getsockname()[1]

    def close(self) -> None:
        self.socket.close()


async def wait_for(condition: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.02, lambda: None)


class ProxyTimeoutTests(TestCase):
    timeout = 60

    def proxy(self, backend_port: int, timeouts: Timeouts, **match: Any) -> tuple[Multiplexer, int]:
        mux = Multiplexer(reactor, [], timeouts=timeouts)
        mux.add_route(ProxyTarget([f"tcp:127.0.0.1:{backend_port}"]), name="p", **(match or {"default": True}))
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return mux, port.getHost().port

    async def test_backend_that_neither_reads_nor_closes_is_dropped_after_server_fin(self) -> None:
        """40 clients send and close; the backend never reads: fds and `active` come back."""
        backend = SilentBackend()
        self.addCleanup(backend.close)
        mux, port = self.proxy(backend.port, Timeouts(server_fin=0.3, tunnel=0, client_idle=0))
        baseline = open_fds()
        clients = []
        for _ in range(40):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(RAW)
            clients.append(client)
        await wait_for(lambda: mux.stats.routes.get("p") is not None
                       and mux.stats.routes["p"].connections == 40)
        for client in clients:
            client.close()
        await wait_for(lambda: mux.stats.routes["p"].active == 0)
        try:
            await wait_for(lambda: open_fds() <= baseline)
        except AssertionError:
            raise AssertionError(f"{open_fds()} fds open, {baseline} before: {fd_names()}") from None
        self.assertEqual(mux.stats.routes["p"].active, 0)

    async def test_without_server_fin_the_pair_stays(self) -> None:
        """The attack reproduced: with server_fin off the half-closed pairs stay open."""
        backend = SilentBackend()
        self.addCleanup(backend.close)
        mux, port = self.proxy(backend.port, Timeouts(server_fin=0, tunnel=0, client_idle=0))
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(RAW)
        await wait_for(lambda: "p" in mux.stats.routes and mux.stats.routes["p"].connections == 1)
        client.close()
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(mux.stats.routes["p"].active, 1)
        backend.close()  # unaccepted connections are reset: the pair ends
        await wait_for(lambda: mux.stats.routes["p"].active == 0)

    async def test_client_that_neither_reads_nor_closes_is_dropped_after_client_fin(self) -> None:
        answered = threading.Event()

        def backend_main(listener: socket.socket) -> None:
            conn, _ = listener.accept()
            conn.recv(100)
            conn.sendall(b"bye\n")
            conn.close()  # FIN: the client now must close within client_fin
            answered.set()

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        thread = threading.Thread(target=backend_main, args=(listener,), daemon=True)
        thread.start()
        mux, port = self.proxy(listener.getsockname()[1], Timeouts(client_fin=0.3, tunnel=0, client_idle=0))
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        client.sendall(RAW)
        await threads.deferToThread(answered.wait, 10)
        await wait_for(lambda: "p" in mux.stats.routes and mux.stats.routes["p"].active == 0)
        client.settimeout(5)
        data = b""
        try:
            while chunk := client.recv(100):
                data += chunk
        except ConnectionResetError:
            pass
        self.assertEqual(data, b"bye\n")

    async def test_quiet_tunnel_is_closed(self) -> None:
        backend = SilentBackend()
        self.addCleanup(backend.close)
        mux, port = self.proxy(backend.port, Timeouts(tunnel=0.3))
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        client.sendall(RAW)
        await wait_for(lambda: "p" in mux.stats.routes and mux.stats.routes["p"].connections == 1)
        started = time.monotonic()
        await wait_for(lambda: mux.stats.routes["p"].active == 0)
        self.assertGreaterEqual(time.monotonic() - started, 0.2)

    async def test_silent_http_backend_gets_the_client_a_504(self) -> None:
        backend = SilentBackend()
        self.addCleanup(backend.close)
        mux, port = self.proxy(backend.port, Timeouts(server_response=0.3), protocol="http")

        def fetch() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(REQUEST)
                data = b""
                while chunk := client.recv(4096):
                    data += chunk
                return data

        answer = await threads.deferToThread(fetch)
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 "), answer)
        await wait_for(lambda: mux.stats.routes["p"].active == 0)

    async def reset_mid_stream(self, send: bytes, **match: Any) -> tuple[bytes, str]:
        """A backend sends b"partial" then resets; what the client reads, and how it ended."""

        def backend_main(listener: socket.socket) -> None:
            conn, _ = listener.accept()
            conn.recv(100)
            conn.sendall(b"partial")
            time.sleep(0.3)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        threading.Thread(target=backend_main, args=(listener,), daemon=True).start()
        _, port = self.proxy(listener.getsockname()[1], Timeouts(), **match)

        def client_main() -> tuple[bytes, str]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(send)
                data = b""
                try:
                    while chunk := client.recv(4096):
                        data += chunk
                except ConnectionResetError:
                    return data, "reset"
                return data, "eof"

        result: tuple[bytes, str] = await threads.deferToThread(client_main)
        return result

    async def test_backend_reset_reaches_a_raw_client_as_a_reset(self) -> None:
        data, end = await self.reset_mid_stream(RAW)
        self.assertEqual((data, end), (b"partial", "reset"))

    async def test_backend_reset_closes_an_http_client_cleanly(self) -> None:
        data, end = await self.reset_mid_stream(REQUEST, protocol="http")
        self.assertEqual((data, end), (b"partial", "eof"))


class IdleTimeoutTests(TestCase):
    """client_idle closes an idle keep-alive HTTP connection to an in-process resource;
    with tunnel = 0, server_idle closes a proxy pair whose backend stays quiet."""

    timeout = 30

    async def test_idle_keep_alive_connection_to_a_resource_is_closed(self) -> None:
        from twisted.web.static import Data

        mux = Multiplexer(reactor, [], timeouts=Timeouts(client_idle=0.3))
        mux.add_route(Data(b"hi", "text/plain"), name="web", protocol="http")
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def keep_alive() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as client:
                client.sendall(REQUEST)
                data = b""
                started = time.monotonic()
                while chunk := client.recv(4096):
                    data += chunk
                return data, time.monotonic() - started

        data, waited = await threads.deferToThread(keep_alive)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "))
        self.assertLess(waited, 5)
        await wait_for(lambda: mux.stats.routes["web"].active == 0)

    async def test_quiet_backend_is_dropped_after_server_idle(self) -> None:
        backend = SilentBackend()
        self.addCleanup(backend.close)
        mux = Multiplexer(reactor, [], timeouts=Timeouts(tunnel=0, client_idle=0, server_idle=0.3))
        mux.add_route(ProxyTarget([f"tcp:127.0.0.1:{backend.port}"]), name="p", default=True)
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(RAW)
        await wait_for(lambda: "p" in mux.stats.routes and mux.stats.routes["p"].connections == 1)
        started = time.monotonic()
        for _ in range(50):  # the client keeps talking; the backend says nothing
            try:
                client.sendall(b"more\n")
            except OSError:  # reset: the pair was closed
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        await wait_for(lambda: mux.stats.routes["p"].active == 0)
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertLess(time.monotonic() - started, 2.0)


class SharedTimerTests(TestCase):
    """Open pairs share one timer per delay: no DelayedCall per proxied connection."""

    timeout = 60

    async def test_thirty_quiet_pairs_share_one_timer_and_still_time_out(self) -> None:
        backend = SilentBackend()
        self.addCleanup(backend.close)
        mux = Multiplexer(reactor, [], timeouts=Timeouts(tunnel=0.6, client_idle=0))
        mux.add_route(ProxyTarget([f"tcp:127.0.0.1:{backend.port}"]), name="p", default=True)
        listening = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        timers_before = len(reactor.getDelayedCalls())
        clients = []
        for _ in range(30):
            client = socket.create_connection(("127.0.0.1", port))
            self.addCleanup(client.close)
            client.sendall(RAW)
            clients.append(client)
        await wait_for(lambda: "p" in mux.stats.routes and mux.stats.routes["p"].active == 30)
        # The sniffing deadlines' queue is empty again; the 30 pairs wait in one queue.
        self.assertLessEqual(len(reactor.getDelayedCalls()) - timers_before, 2)
        await wait_for(lambda: mux.stats.routes["p"].active == 0, limit=5)
        for client in clients:  # each pair was aborted: EOF or reset, nothing else
            client.settimeout(5)
            try:
                data = client.recv(10)
            except ConnectionResetError:
                data = b""
            self.assertEqual(data, b"")


class TransportEngineTimeoutTests(ProxyTimeoutTests):
    """The timeout tests again with the relay off: pairs copied through Twisted transports."""

    def setUp(self) -> None:
        self.patch(ProxyTarget, "relay", False)
        super().setUp()


class TransportEngineIdleTests(IdleTimeoutTests):
    """The idle-timeout tests again with the relay off."""

    def setUp(self) -> None:
        self.patch(ProxyTarget, "relay", False)
        super().setUp()
