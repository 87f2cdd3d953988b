"""A real net.tcp client and service: Mono's WCF (NetTcpBinding, security None) through portmux.

``wcf/EchoWcf.cs`` is compiled once per test session with ``mcs``; its services run
for the whole class. A Mono client reaches Mono services through portmux's nmf Via
routes (proxy targets, buffered and streamed transfer modes, two services with
different Via paths behind one port); an unknown Via gets portmux's EndpointNotFound
Fault, which the client reports. A service that checks the Via against its own
address (as .NET's listener does) refuses a proxied call unless the route has
``rewrite_via``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer
from portmux.daemon.config import parse_config
from tests.support import free_port, stop_process
from tests.targets.test_tls_support import in_thread, reactor, wait_closed

SOURCE = Path(__file__).with_name("wcf") / "EchoWcf.cs"
TIMEOUT = 30.0
MISSING = [b for b in ("mcs", "mono") if shutil.which(b) is None]
SERVICEMODEL = Path("/usr/lib/mono/4.5/System.ServiceModel.dll")


def compile_program(directory: Path) -> Path:
    """Blocking: ``EchoWcf.exe`` built from SOURCE into ``directory``."""
    program = directory / "EchoWcf.exe"
    subprocess.run(
        ["mcs", "-nologo", "-r:System.ServiceModel.dll", f"-out:{program}", str(SOURCE)],
        check=True, capture_output=True, timeout=TIMEOUT,
    )
    return program


@pytest.fixture(scope="session")
def wcf_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled service/client program, once per session (mcs takes a while)."""
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed (Debian: mono-mcs)")
    if not SERVICEMODEL.exists():
        pytest.skip("Mono's WCF is not installed (Debian: libmono-system-servicemodel4.0a-cil)")
    return compile_program(tmp_path_factory.mktemp("wcf"))


class Service:
    """One Mono WCF service process on a free loopback port."""

    def __init__(self, program: Path, log: Path, role: str, path: str, mode: str, name: str) -> None:
        self.log = log
        for _ in range(3):  # the port may be taken between free_port() and Mono's bind
            self.port = free_port()
            self.address = f"net.tcp://127.0.0.1:{self.port}/{path}"
            with open(log, "wb") as out:
                self.process = subprocess.Popen(
                    ["mono", str(program), role, self.address, mode, name],
                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                )
            if self._wait_listening():
                return
            stop_process(self.process)
        raise RuntimeError(f"Mono service did not start: {log.read_text(errors='replace')}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if b"listening " in self.log.read_bytes():
                return True
            time.sleep(0.05)
        return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def call(program: Path, via: str, mode: str, address: str) -> str:
    """Blocking: one Mono client call; its output line (``reply ...`` or ``error ...``)."""
    done = subprocess.run(
        ["mono", str(program), "call", via, mode, address],
        capture_output=True, timeout=TIMEOUT, check=False,
    )
    return (done.stdout + done.stderr).decode(errors="replace").strip()


class MonoWcfThroughPortmuxTests(TestCase):
    """Mono WCF clients and services, every connection through one portmux port."""

    program: ClassVar[Path]
    services: ClassVar[dict[str, Service]]

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _services(cls, wcf_program: Path, tmp_path_factory: Any) -> Iterator[None]:
        """Three services for the whole class: strict buffered, plain buffered, strict streamed."""
        logs = tmp_path_factory.mktemp("wcf-logs")
        cls.program = wcf_program
        cls.services = {}
        try:
            for key, role, mode in (
                ("strict", "serve-strict", "buffered"),
                ("plain", "serve", "buffered"),
                ("streamed", "serve-strict", "streamed"),
            ):
                cls.services[key] = Service(wcf_program, logs / f"{key}.log", role, key, mode, key)
            yield
        finally:
            for service in cls.services.values():
                service.stop()

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        """One portmux port; Via routes to the services, with and without rewrite_via."""
        s = {key: service.port for key, service in self.services.items()}
        config = parse_config(
            f"""
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[[route]]
name = "strict-rewritten"
match = {{ via = "net.tcp://+/strict/" }}
proxy = {{ endpoints = ["tcp:127.0.0.1:{s['strict']}"], rewrite_via = true }}

[[route]]
name = "strict-as-is"
match = {{ via = "net.tcp://+/as-is/" }}
proxy = ["tcp:127.0.0.1:{s['strict']}"]

[[route]]
name = "plain"
match = {{ via = "net.tcp://+/plain/" }}
proxy = ["tcp:127.0.0.1:{s['plain']}"]

[[route]]
name = "streamed"
match = {{ protocol = "nmf", via = "net.tcp://127.0.0.1/streamed/" }}
proxy = {{ endpoints = ["tcp:127.0.0.1:{s['streamed']}"], rewrite_via = "net.tcp://127.0.0.1:{s['streamed']}" }}
""",
            "wcf.toml",
            reactor,
        )
        self.mux = Multiplexer(reactor, config.routes, settings=config.sniff)
        port = yield self.mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def via(self, path: str) -> str:
        return f"net.tcp://127.0.0.1:{self.port}/{path}"

    @defer.inlineCallbacks
    def calls(self, *requests: tuple[str, str, str]) -> Any:
        """Run the Mono client calls (Via path, mode, service) side by side; their outputs."""
        results = yield defer.gatherResults([
            in_thread(call, self.program, self.via(path), mode, self.services[key].address)
            for path, mode, key in requests
        ])
        for route in ("strict-rewritten", "strict-as-is", "plain", "streamed"):
            yield wait_closed(self.mux, route)
        return results

    @defer.inlineCallbacks
    def test_two_services_behind_one_port_by_via_path(self) -> Any:
        """Buffered mode: /strict/ and /plain/ reach two services on two ports."""
        strict, plain = yield self.calls(("strict", "buffered", "strict"), ("plain", "buffered", "plain"))
        self.assertEqual(strict, f"reply strict:hello via {self.services['strict'].address}")
        self.assertEqual(plain, f"reply plain:hello via {self.via('plain')}")
        self.assertEqual(self.mux.stats.routes["strict-rewritten"].connections, 1)
        self.assertEqual(self.mux.stats.routes["plain"].connections, 1)

    @defer.inlineCallbacks
    def test_streamed_mode_with_a_configured_via_address(self) -> Any:
        """Streamed mode (singleton-unsized framing) through an exact-host Via route."""
        (streamed,) = yield self.calls(("streamed", "streamed", "streamed"))
        self.assertEqual(streamed, f"reply streamed:hello via {self.services['streamed'].address}")

    @defer.inlineCallbacks
    def test_a_via_checking_service_refuses_the_unrewritten_via(self) -> Any:
        """Without rewrite_via the service sees portmux's address in the Via and refuses."""
        (output,) = yield self.calls(("as-is", "buffered", "strict"))
        self.assertIn("error System.ServiceModel.FaultException", output)
        self.assertIn(f"refused via {self.via('as-is')}", self.services["strict"].output())

    @defer.inlineCallbacks
    def test_an_unknown_via_gets_endpoint_not_found(self) -> Any:
        """No route for the Via: portmux's Fault record, reported by the Mono client."""
        (output,) = yield self.calls(("nowhere", "buffered", "plain"))
        self.assertIn("error System.ServiceModel.FaultException", output)
        self.assertIn("http://schemas.microsoft.com/ws/2006/05/framing/faults/EndpointNotFound", output)
        self.assertEqual(self.mux.stats.refusals["unknown_service"], 1)  # an unknown Via
