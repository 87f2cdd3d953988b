"""Real HAProxy in front of `twistd -n portmux` (issue 10, items 4 and 5).

A trusted listener reads HAProxy's `send-proxy-v2` header and from then on the
client's address is the connection's everywhere: per-request `network` routing of
in-process resources, `getClientAddress()`/`getHost()` in a Resource and in a
factory's transport, the route counters. A listener that trusts nobody refuses a
`send-proxy` (v1) or `send-proxy-v2` connection with one log line naming the peer.

Loopback addresses tell the parties apart: curl and nc bind 127.0.0.5, HAProxy
reaches portmux from 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, stop_process, wait_listening

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CLIENT = "127.0.0.5"

pytestmark = [
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (Debian: haproxy)"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed"),
]

WHOAMI = '''
"""Resources and a factory that report the addresses their connection shows them."""
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource


class WhoAmI(Resource):
    isLeaf = True

    def __init__(self, name):
        super().__init__()
        self.name = name

    def render_GET(self, request):
        peer, host = request.getClientAddress(), request.getHost()
        return f"{self.name} {peer.host} {host.host}:{host.port}\\n".encode()


inside = WhoAmI("inside")
outside = WhoAmI("outside")


class Report(Protocol):
    def connectionMade(self):
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.transport.write(f"{peer.host} {host.host}:{host.port}\\n".encode())
        self.transport.loseConnection()


report = Factory.forProtocol(Report)
'''


@dataclass
class Setup:
    trusted: int
    untrusted: int
    via_v2: int
    untrusted_v1: int
    untrusted_v2: int
    log: Path


CONFIG = f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
proxy_protocol = true
trusted = ["127.0.0.1/32"]

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[[route]]
name = "status"
match = {{ protocol = "http", path = "/portmux/" }}
status = true

[[route]]
name = "inside"
match = {{ protocol = "http", network = "{CLIENT}/32" }}
resource = "whoami:inside"

[[route]]
name = "outside"
match = {{ protocol = "http" }}
resource = "whoami:outside"

[[route]]
name = "report"
match = {{ protocol = "tcpmux", service = "report" }}
factory = "whoami:report"
"""
LISTENING = re.compile(r"portmux listening on \S+ \(127\.0\.0\.1:(\d+)\)")


def _haproxy_config(via_v2: int, trusted: int, untrusted_v1: int, untrusted_v2: int,
                    untrusted: int) -> str:
    def pair(name: str, front: int, back: int, option: str) -> str:
        return (f"frontend {name}_in\n    bind 127.0.0.1:{front}\n    default_backend {name}\n"
                f"backend {name}\n    server portmux 127.0.0.1:{back} {option}\n")

    return (
        "global\n    maxconn 64\n"
        "defaults\n    mode tcp\n    retries 0\n    timeout connect 5s\n    timeout client 10s\n"
        "    timeout server 10s\n"
        + pair("trusted", via_v2, trusted, "send-proxy-v2")
        + pair("untrusted_v1", untrusted_v1, untrusted, "send-proxy")
        + pair("untrusted_v2", untrusted_v2, untrusted, "send-proxy-v2")
    )


def _portmux_ports(log: Path, process: subprocess.Popen[bytes]) -> tuple[int, int]:
    """The two listeners' ports, in config order, from the startup log."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = LISTENING.findall(log.read_text() if log.exists() else "")
        if len(found) == 2:
            return int(found[0]), int(found[1])
        if process.poll() is not None:
            raise AssertionError(f"portmux exited with {process.returncode}")
        time.sleep(0.05)
    raise AssertionError("portmux did not report its ports")


def _start_haproxy(directory: Path, trusted: int, untrusted: int
                   ) -> tuple[subprocess.Popen[bytes], tuple[int, int, int]]:
    """HAProxy on three free ports; new ports if one was taken meanwhile (it then exits)."""
    for _ in range(3):
        ports = (free_port(), free_port(), free_port())
        config = directory / "haproxy.cfg"
        config.write_text(_haproxy_config(ports[0], trusted, ports[1], ports[2], untrusted))
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # HAProxy binds every frontend before it serves any, so one is enough to
            # wait for; probing the others would send PROXY headers to portmux.
            wait_listening(ports[0], haproxy)
            return haproxy, ports
        except RuntimeError:
            stop_process(haproxy)
    raise AssertionError("haproxy did not start")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    (tmp_path / "whoami.py").write_text(WHOAMI)
    config = tmp_path / "portmux.toml"
    config.write_text(CONFIG)
    log = tmp_path / "portmux.log"
    portmux = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "-l", str(log), "portmux", "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    haproxy = None
    try:
        trusted, untrusted = _portmux_ports(log, portmux)
        haproxy, (via_v2, untrusted_v1, untrusted_v2) = _start_haproxy(tmp_path, trusted,
                                                                       untrusted)
        yield Setup(trusted, untrusted, via_v2, untrusted_v1, untrusted_v2, log)
    finally:
        if haproxy is not None:
            stop_process(haproxy)
        portmux.send_signal(signal.SIGTERM)
        try:
            portmux.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(portmux)


def _curl(port: int, *paths: str) -> subprocess.CompletedProcess[bytes]:
    urls = [f"http://127.0.0.1:{port}{path}" for path in paths]
    return subprocess.run(["curl", "-sS", "--interface", CLIENT, "--max-time", "10", *urls],
                          capture_output=True, check=False, timeout=30)


def test_resources_see_the_proxy_source_per_request(setup: Setup) -> None:
    # Two requests on one kept-alive connection: both dispatched on the PROXY source.
    done = _curl(setup.via_v2, "/a", "/b")
    assert done.returncode == 0, done.stderr
    # getHost() is the PROXY destination: the address curl connected to (HAProxy's).
    expected = f"inside {CLIENT} 127.0.0.1:{setup.via_v2}\n".encode()
    assert done.stdout == expected * 2


def test_direct_connection_from_the_client_is_not_the_inside_route(setup: Setup) -> None:
    # The same client without the balancer, on the listener that trusts nobody.
    done = _curl(setup.untrusted, "/a")
    assert done.stdout == f"inside {CLIENT} 127.0.0.1:{setup.untrusted}\n".encode()
    # From another address it is the outside route: routing really uses the address.
    other = subprocess.run(["curl", "-sS", "--max-time", "10",
                            f"http://127.0.0.1:{setup.untrusted}/a"],
                           capture_output=True, check=False, timeout=30)
    assert other.stdout == f"outside 127.0.0.1 127.0.0.1:{setup.untrusted}\n".encode()


def test_factory_transport_sees_the_proxy_addresses(setup: Setup) -> None:
    if shutil.which("nc") is None:
        pytest.skip("nc not installed (Debian: netcat-openbsd)")
    done = subprocess.run(["nc", "-N", "-w", "5", "-s", CLIENT, "127.0.0.1", str(setup.via_v2)],
                          input=b"report\r\n", capture_output=True, check=False, timeout=30)
    assert done.stdout == f"+\r\n{CLIENT} 127.0.0.1:{setup.via_v2}\n".encode()


def test_counters_count_the_proxy_source_route(setup: Setup) -> None:
    assert _curl(setup.via_v2, "/x").returncode == 0
    status = _curl(setup.via_v2, "/portmux/status.json")
    routes = {route["name"]: route for route in json.loads(status.stdout)["routes"]}
    assert routes["inside"]["counters"]["connections"] >= 1
    assert routes["outside"]["counters"]["connections"] == 0


def _log_lines(log: Path, text: str, count: int, limit: float = 10.0) -> list[str]:
    deadline = time.monotonic() + limit
    while True:
        lines = [line for line in log.read_text().splitlines() if text in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_untrusted_listener_refuses_a_proxy_header(setup: Setup, version: str) -> None:
    port = setup.untrusted_v1 if version == "v1" else setup.untrusted_v2
    done = _curl(port, "/a")
    assert done.stdout == b""  # the resource never answered
    assert done.returncode != 0
    lines = _log_lines(setup.log, "PROXY header from untrusted 127.0.0.1", 1)
    assert len(lines) == 1, lines
    assert "refused" in lines[0]
    assert "Traceback" not in setup.log.read_text()
    # The refusal is counted.
    status = _curl(setup.untrusted, "/portmux/status.json")
    assert sum(json.loads(status.stdout)["refusals"].values()) >= 1
