"""End to end: a real OpenSSH client, `portmux connect` as ProxyCommand, sshd behind the port."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from portmux.core.mux import Multiplexer
from portmux.targets.help import HelpTarget
from tests.support import SSHD, start_sshd, stop_process

REPO = Path(__file__).resolve().parents[2]
SSH = shutil.which("ssh")
PORTMUX = [sys.executable, "-m", "portmux"]
reactor: Any = global_reactor


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
        self.sshd, self.sshd_port = start_sshd(self.dir)
        self.addCleanup(stop_process, self.sshd)

    @inlineCallbacks
    def _listen(self) -> Any:
        from portmux.targets.proxy import ProxyTarget

        mux = Multiplexer(reactor)
        mux.add_route(ProxyTarget(reactor, [f"tcp:127.0.0.1:{self.sshd_port}"]), name="ssh",
                      protocol="tcpmux", service="ssh")
        mux.add_route(HelpTarget(), name="help", protocol="tcpmux", service="help")
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
