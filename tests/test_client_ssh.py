"""End to end: a real OpenSSH client, `portmux connect` as ProxyCommand, sshd behind the port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from portmux.mux import Multiplexer
from portmux.targets.help import HelpTarget

REPO = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh")
PORTMUX = [sys.executable, "-m", "portmux"]
reactor: Any = global_reactor


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sshd did not start listening")


def _peer_port(selectable: Any) -> int | None:
    """The remote port of a connected TCP selectable (any kind of leg), else None."""
    try:
        return int(selectable.getPeer().port)
    except Exception:  # noqa: BLE001 - listening ports, pipes, closed sockets
        return None


class SshThroughConnectTests(TestCase):
    """ssh -o ProxyCommand='portmux connect 127.0.0.1:PORT ssh' reaches a real sshd."""

    timeout = 60

    def setUp(self) -> None:
        if not (SSH and os.path.exists(SSHD)):
            raise SkipTest("needs openssh-client and openssh-server")
        if os.geteuid() != 0:
            raise SkipTest("sshd in this test logs in as root")
        self.dir = Path(tempfile.mkdtemp(prefix="portmux-ssh-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        for name in ("host", "user"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)],
                check=True,
            )
        (self.dir / "authorized_keys").write_bytes((self.dir / "user.pub").read_bytes())
        self.sshd_port = _free_port()
        config = self.dir / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.sshd_port}\n"
            f"HostKey {self.dir / 'host'}\nAuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)
        self.sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config), "-h", str(self.dir / "host")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "sshd.log", "wb"),  # noqa: SIM115
        )
        self.addCleanup(self._stop_sshd)
        _wait_listening(self.sshd_port, self.sshd)

    def _stop_sshd(self) -> None:
        self.sshd.terminate()
        try:
            self.sshd.wait(5)
        except subprocess.TimeoutExpired:
            self.sshd.kill()
            self.sshd.wait()

    @inlineCallbacks
    def _listen(self) -> Any:
        from portmux.targets.proxy import ProxyTarget

        mux = Multiplexer(reactor)
        mux.add_route("ssh", ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.sshd_port}"]),
                      protocol="tcpmux", service="ssh")
        mux.add_route("help", HelpTarget(), protocol="tcpmux", service="help")
        port = yield mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self._backend_legs_closed)
        return port.getHost().port

    @inlineCallbacks
    def _backend_legs_closed(self) -> Any:
        """Wait (bounded) for the proxy's connections to sshd to finish closing."""
        for _ in range(200):
            legs = [
                s for s in reactor.getReaders() + reactor.getWriters()
                if _peer_port(s) == self.sshd_port
            ]
            if not legs:
                return
            yield deferLater(reactor, 0.025, lambda: None)

    def _ssh(self, mux_port: int, service: str, command: str) -> Deferred[Any]:
        proxy = " ".join([*PORTMUX, "connect", f"127.0.0.1:{mux_port}", service])
        args = [
            "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR", "-i", str(self.dir / "user"),
            "-o", f"ProxyCommand={proxy}", "-l", "root", "portmux-test-host", command,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return getProcessOutputAndValue(SSH, args, env=env)  # type: ignore[no-any-return]

    @inlineCallbacks
    def test_ssh_command_runs_through_the_shared_port(self) -> Any:
        mux_port = yield self._listen()
        out, err, code = yield self._ssh(mux_port, "ssh", "echo through-portmux; echo $((6*7))")
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        self.assertEqual(out, b"through-portmux\n42\n")

    @inlineCallbacks
    def test_stdin_reaches_the_remote_command_and_eof_ends_it(self) -> Any:
        mux_port = yield self._listen()
        # `wc -c` only answers after stdin EOF crosses ssh → connect → portmux → sshd.
        proxy = " ".join([*PORTMUX, "connect", f"127.0.0.1:{mux_port}", "SSH"])
        script = (
            f"head -c 100000 /dev/zero | {SSH} -F /dev/null -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
            f"-o IdentitiesOnly=yes -i {self.dir / 'user'} -o 'ProxyCommand={proxy}' "
            "-l root x 'wc -c'"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out, err, code = yield getProcessOutputAndValue("/bin/sh", ["-c", script], env=env)
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        self.assertEqual(out.strip(), b"100000")

    @inlineCallbacks
    def test_unknown_service_fails_with_the_servers_reason(self) -> Any:
        mux_port = yield self._listen()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "portmux", "connect", f"127.0.0.1:{mux_port}", "telnet"],
            env=env,
        )
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertIn(b"service 'telnet' refused: unknown service 'telnet'", err)

    @inlineCallbacks
    def test_services_lists_help(self) -> Any:
        mux_port = yield self._listen()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "portmux", "services", f"127.0.0.1:{mux_port}"], env=env,
        )
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        self.assertEqual(out, b"ssh\n")
