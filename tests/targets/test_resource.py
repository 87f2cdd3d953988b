"""In-process resources share one Site: keep-alive requests dispatch per request."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from portmux.core.mux import Multiplexer
from portmux.targets.resource import ResourceTarget


def leaf(text: bytes) -> Resource:
    resource = Resource()
    resource.putChild(b"", Data(text, "text/plain"))
    resource.putChild(b"page", Data(text + b" page", "text/plain"))
    return resource


def keep_alive_requests(port: int, requests: list[tuple[str, str]]) -> list[bytes]:
    """Send several requests on ONE connection; return each response body."""
    bodies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for host, path in requests:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            length = 0
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 "), status
            while True:
                line = reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            bodies.append(status.split()[1] + b" " + reader.read(length))
    return bodies


class SharedSiteTests(TestCase):
    def setUp(self) -> Any:
        self.mux = Multiplexer(reactor)
        self.mux.add_route(ResourceTarget(leaf(b"app")), name="app", protocol="http",
                           host="a.example", path="/app/")
        self.mux.add_route(ResourceTarget(leaf(b"a-root")), name="a", protocol="http",
                           host="a.example")
        self.mux.add_route(ResourceTarget(leaf(b"wild")), name="wild", protocol="http",
                           host="*.b.example")
        d = self.mux.listen("tcp:0:interface=127.0.0.1")

        def listening(port: Any) -> None:
            self.port = port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    def test_keep_alive_requests_for_different_paths_and_hosts(self) -> Any:
        port = self.port.getHost().port
        d = threads.deferToThread(keep_alive_requests, port, [
            ("a.example", "/"),
            ("a.example", "/app/"),
            ("a.example", "/app/page"),
            ("a.example", "/page"),
            ("x.b.example", "/page"),
            ("nowhere.example", "/"),
        ])

        def check(bodies: list[bytes]) -> None:
            self.assertEqual(bodies[:5], [b"200 a-root", b"200 app", b"200 app page",
                                          b"200 a-root page", b"200 wild page"])
            self.assertTrue(bodies[5].startswith(b"404 "))

        return d.addCallback(check)


class MountPointTests(TestCase):
    def test_plain_resource_renders_at_its_mount_point(self) -> Any:
        mux = Multiplexer(reactor)
        mux.add_route(ResourceTarget(Data(b"app", "text/plain")), name="app", protocol="http",
                      path="/app/")
        mux.add_route(ResourceTarget(Data(b"root", "text/plain")), name="root", protocol="http")
        d = mux.listen("tcp:0:interface=127.0.0.1")

        def listening(port: Any) -> Any:
            self.addCleanup(port.stopListening)
            return threads.deferToThread(keep_alive_requests, port.getHost().port, [
                ("any", "/"), ("any", "/app/"), ("any", "/app"), ("any", "/app/deeper")])

        def check(bodies: list[bytes]) -> None:
            self.assertEqual(bodies[:3], [b"200 root", b"200 app", b"200 app"])
            self.assertTrue(bodies[3].startswith(b"404 "))

        return d.addCallback(listening).addCallback(check)


class DavResource(Resource):
    isLeaf = True

    def render_PROPFIND(self, request: Any) -> bytes:
        request.setResponseCode(207)
        return b"<multistatus/>"


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class MethodAndHostTests(TestCase):
    def setUp(self) -> Any:
        self.mux = Multiplexer(reactor)
        self.mux.add_route("dav", ResourceTarget(DavResource()), protocol="http")
        d = self.mux.listen("tcp:0:interface=127.0.0.1")

        def listening(port: Any) -> None:
            self.port = port.getHost().port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    def test_curl_extension_method_reaches_the_resource(self) -> Any:
        import shutil
        import subprocess

        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")

        def run() -> bytes:
            return subprocess.run(
                [curl, "-sS", "-X", "PROPFIND", "-w", " %{http_code}",
                 f"http://127.0.0.1:{self.port}/dav/"],
                capture_output=True, timeout=20, check=True).stdout

        d = threads.deferToThread(run)
        d.addCallback(self.assertEqual, b"<multistatus/> 207")
        return d

    def test_unicode_digit_in_host_port_gets_400_not_a_traceback(self) -> Any:
        d = threads.deferToThread(
            raw_exchange, self.port, b"GET / HTTP/1.1\r\nHost: a:\xc2\xb2\r\n\r\n")

        def check(answer: bytes) -> None:
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertIn(b"invalid Host", answer)

        return d.addCallback(check)
