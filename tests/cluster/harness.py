"""A real etcd, portmux nodes, workers and HAProxy on loopback, each started and killed by PID."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ETCD = shutil.which("etcd")
HAPROXY = shutil.which("haproxy")
TWISTD = str(Path(sys.executable).with_name("twistd"))
MISSING = [name for name, path in (("etcd", ETCD), ("haproxy", HAPROXY), ("curl", shutil.which("curl")),
                                   ("nc", shutil.which("nc"))) if not path]
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nothing listens on now (bound, then released)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def stable_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, for a server restarted on the same port.

    A port from ``free_port`` may be taken meanwhile as the local port of some outgoing
    connection; ports below the kernel's ephemeral range never are.
    """
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


def wait_for(predicate: Any, what: str, deadline: float = DEADLINE, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true (bounded)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {deadline}s waiting for {what() if callable(what) else what}")


def accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Processes:
    """Every process a test starts; ``stop`` ends exactly those, by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cleanups: list[Any] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        environment = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        proc = subprocess.Popen(argv, cwd=self.tmp, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                env=environment)
        self.procs.append(proc)
        return proc, log

    def twistd(self, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        return self.start(name, [TWISTD, "-n", "--pidfile=", *args], env)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for cleanup in self.cleanups:
            cleanup()


class Etcd:
    """One etcd member on 127.0.0.1 with its own data dir and ports; restartable on the same ones."""

    def __init__(self, processes: Processes, tmp: Path, tls: dict[str, Path] | None = None) -> None:
        self.processes = processes
        self.tls = tls  # server cert/key and the CA client certificates must chain to
        # etcd fsyncs every write; on tmpfs that costs nothing, as on a server with a fast disk.
        shm = Path("/dev/shm")
        self.data_parent = Path(tempfile.mkdtemp(prefix="portmux-etcd-", dir=shm if shm.is_dir() else tmp))
        processes.cleanups.append(lambda: shutil.rmtree(self.data_parent, ignore_errors=True))
        self.tmp = tmp
        self._pick(0)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False

    def start(self) -> None:
        """Start etcd; on a first start, pick new ports if another process took them meanwhile."""
        for attempt in range(3):
            try:
                self._start()
                return
            except RuntimeError as error:
                if self.started or "address already in use" not in str(error) or attempt == 2:
                    raise
                self._pick(attempt + 1)

    def _pick(self, attempt: int) -> None:
        """Two distinct free ports and a fresh data dir (a failed start leaves its member there)."""
        self.data = self.data_parent / f"data-{attempt}"
        self.client_port = stable_port()
        self.peer_port = stable_port()
        while self.peer_port == self.client_port:
            self.peer_port = stable_port()
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    def _start(self) -> None:
        assert ETCD is not None
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc, self.log = self.processes.start("etcd", [
            ETCD, "--name", "test", "--data-dir", str(self.data),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--log-level", "warn",
            *(["--cert-file", str(self.tls["cert"]), "--key-file", str(self.tls["key"]),
               "--client-cert-auth", "--trusted-ca-file", str(self.tls["ca"])] if self.tls else []),
        ])
        wait_for(self.healthy, "etcd to be healthy")
        self.started = True

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited: {self.log.read_text()[-2000:]}")
        if self.tls:
            return "is healthy" in self.ctl("endpoint", "health")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return bool(json.load(reply).get("health") == "true")
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        assert self.proc is not None
        Processes.kill(self.proc)

    def ctl(self, *args: str, stdin: bytes | None = None) -> str:
        """Run the real etcdctl against this member."""
        tls = ["--cacert", str(self.tls["ca"]), "--cert", str(self.tls["client_cert"]),
               "--key", str(self.tls["client_key"])] if self.tls else []
        result = subprocess.run(["etcdctl", "--endpoints", self.url, *tls, *args], input=stdin, capture_output=True,
                                timeout=15, check=False, env=dict(os.environ, ETCDCTL_API="3"))
        return (result.stdout + result.stderr).decode()


class Node:
    """One ``twistd portmux`` node listening on ``host`` (PROXY v2 from 127.0.0.1 trusted)."""

    def __init__(self, processes: Processes, tmp: Path, name: str, host: str, etcd: Etcd,
                 lease_ttl: int = 2, extra: str = "") -> None:
        self.processes = processes
        self.name = name
        self.host = host
        self.port = stable_port(host)
        self.control = tmp / f"{name}.sock"
        self.config = tmp / f"{name}.toml"
        self.config.write_text(
            f'[[listen]]\nendpoint = "tcp:{self.port}:interface={host}"\nproxy_protocol = true\n'
            'trusted = ["127.0.0.1/32"]\n'
            f'[[listen]]\nendpoint = "tcp:0:interface={host}"\n'  # direct, for status and direct tests
            f'[control]\nendpoint = "unix:{self.control}"\n'
            f'[registry]\netcd = ["{etcd.url}"]\nprefix = "/portmux-test/"\nnode = "{name}"\nlease_ttl = {lease_ttl}\n'
            '[[route]]\nname = "status"\nmatch = { protocol = "http", host = "status.test" }\nstatus = true\n'
            + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc, self.log = self.processes.twistd(self.name, "portmux", "--config", str(self.config))
        self.starts = getattr(self, "starts", -1) + 1
        found = wait_for(lambda: self._direct_port(), f"{self.name} listening")
        self.direct_port = found
        wait_for(lambda: accepts(self.host, self.port), f"{self.name} on {self.host}:{self.port}")
        wait_for(self.control.exists, f"{self.name}'s control socket")

    def _direct_port(self) -> int | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
        import re

        found = re.findall(rf"tcp:0:interface={self.host} \({self.host}:(\d+)\)", self.log.read_text())
        return int(found[-1]) if len(found) > self.starts else None

    def status(self) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{self.host}:{self.direct_port}/status.json",
                                         headers={"Host": "status.test"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            result: dict[str, Any] = json.load(reply)
            return result

    def metrics(self) -> str:
        request = urllib.request.Request(f"http://{self.host}:{self.direct_port}/metrics",
                                         headers={"Host": "status.test"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            return str(reply.read().decode())

    def routes(self) -> set[str]:
        """Names of the registered routes (local and remote) this node routes now."""
        try:
            return {r["name"] for r in self.status()["routes"] if r["registered"]}
        except OSError:
            return set()

    def kill(self) -> None:
        assert self.proc is not None
        Processes.kill(self.proc)


class HAProxy:
    """A real HAProxy on 127.0.0.1: ``lb`` balances over every node; ``via_<node>`` reaches one."""

    def __init__(self, processes: Processes, tmp: Path, nodes: list[Node]) -> None:
        self.processes = processes
        self.ports = {"lb": free_port()} | {f"via_{n.name}": free_port() for n in nodes}
        servers = "".join(
            f"    server {n.name} {n.host}:{n.port} send-proxy-v2 check check-send-proxy inter 300 fall 2 rise 1\n"
            for n in nodes)
        text = ("global\n    maxconn 256\n"
                "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n"
                f"frontend lb\n    bind 127.0.0.1:{self.ports['lb']}\n    default_backend all\n"
                f"backend all\n    balance roundrobin\n{servers}")
        for n in nodes:
            text += (f"frontend via_{n.name}\n    bind 127.0.0.1:{self.ports[f'via_{n.name}']}\n"
                     f"    default_backend only_{n.name}\n"
                     f"backend only_{n.name}\n    server {n.name} {n.host}:{n.port} send-proxy-v2\n")
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(text)

    def start(self) -> None:
        assert HAPROXY is not None
        self.proc, self.log = self.processes.start("haproxy", [HAPROXY, "-db", "-f", str(self.config)])
        for port in self.ports.values():
            wait_for(lambda port=port: accepts("127.0.0.1", port), f"haproxy on {port}")


def curl(port: int, host: str, path: str = "/") -> tuple[int, str]:
    """One request through real curl: (status, body)."""
    out = subprocess.run(["curl", "-s", "-m", "5", "-H", f"Host: {host}", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=15, check=False)
    body, _, code = out.stdout.decode().rpartition("\n")
    return int(code or 0), body.strip()
