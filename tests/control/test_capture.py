"""Issue 11, bug 6: a more specific registration may not capture another uid's clients.

Alice holds ``http a.example/api``, ``tcpmux payroll/1`` and ``net.tcp://host.example/svc/``;
bob (also allowed) tries a longer prefix, a newer version and a stronger wildcard.
At the registry level with distinct uids, and once over the real control socket with
worker processes running as two real uids and a real ``nc`` client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from portmux.control import _framing as pc
from portmux.control._keys import parse_match
from portmux.control._registry import RegistrationError, Registry, Reservation
from portmux.control._server import ControlService
from portmux.core.mux import Multiplexer
from portmux.core.preamble import Preamble

ALICE_UID, BOB_UID = 64101, 64102


@dataclass(eq=False)
class Owner:
    uid: int
    pid: int = 1
    gid: int = 0
    label: str = "test"


ALICE_KEYS = [
    {"protocol": "http", "host": "a.example", "path": "/api"},
    {"protocol": "tcpmux", "service": "payroll/1"},
    {"protocol": "nmf", "via": "net.tcp://host.example/svc/"},
]
CAPTURES = [
    ({"protocol": "http", "host": "a.example", "path": "/api/v1"}, "host=a.example,path=/api"),
    ({"protocol": "tcpmux", "service": "payroll/2"}, "service=payroll/1"),
    ({"protocol": "nmf", "via": "net.tcp://+/svc/"}, "via=net.tcp://host.example/svc/"),
    ({"protocol": "nmf", "via": "net.tcp://host.example/svc/deeper/"}, "via=net.tcp://host.example/svc/"),
    ({"protocol": "tls", "sni": "a.example"}, None),  # another protocol: allowed
]
HARMLESS = [
    {"protocol": "http", "host": "*", "path": "/api/v1"},  # alice's exact host still wins
    {"protocol": "http", "host": "b.example", "path": "/api/v1"},
    {"protocol": "http", "host": "a.example", "path": "/"},  # shorter: alice's /api still wins
    {"protocol": "tcpmux", "service": "payroll/0.5"},  # older: unversioned clients still reach /1
    {"protocol": "tcpmux", "service": "payroll"},
    {"protocol": "nmf", "via": "net.tcp://*/svc/"},  # weaker than alice's exact host
    {"protocol": "nmf", "via": "net.tcp://+/other/"},
]


def alice_registry(reservations: tuple[Reservation, ...] = ()) -> tuple[Registry, Owner, Owner]:
    registry = Registry(lambda routes: None, reservations)
    alice, bob = Owner(ALICE_UID), Owner(BOB_UID)
    for keys in ALICE_KEYS:
        registry.register(alice, parse_match(keys), "handoff")
    return registry, alice, bob


@pytest.mark.parametrize(("keys", "victim"), [c for c in CAPTURES if c[1]])
def test_capture_is_refused_naming_the_owner(keys: dict[str, str], victim: str) -> None:
    registry, _, bob = alice_registry()
    with pytest.raises(RegistrationError) as error:
        registry.register(bob, parse_match(keys), "handoff")
    assert error.value.code == "AddressReserved"
    assert victim in error.value.message and f"uid {ALICE_UID}" in error.value.message


@pytest.mark.parametrize("keys", HARMLESS + [CAPTURES[-1][0]])
def test_registrations_that_take_nothing_of_alices_are_allowed(keys: dict[str, str]) -> None:
    registry, _, bob = alice_registry()
    registry.register(bob, parse_match(keys), "handoff")


def test_the_same_uid_may_refine_its_own_registrations() -> None:
    registry, alice, _ = alice_registry()
    for keys, _victim in CAPTURES:
        registry.register(alice, parse_match(keys), "handoff")


def test_a_reservation_grants_the_space() -> None:
    grant = Reservation(parse_match({"host": "a.example", "path": "/api/v1"}), (BOB_UID,))
    registry, _, bob = alice_registry((grant,))
    registry.register(bob, parse_match({"protocol": "http", "host": "a.example", "path": "/api/v1"}), "handoff")
    with pytest.raises(RegistrationError):
        registry.register(bob, parse_match({"protocol": "tcpmux", "service": "payroll/2"}), "handoff")


def test_capture_is_checked_both_ways() -> None:
    """Alice cannot be captured by bob after the fact, and bob's space is protected too."""
    registry, alice, bob = alice_registry()
    registry.register(bob, parse_match({"protocol": "http", "host": "b.example", "path": "/"}), "handoff")
    with pytest.raises(RegistrationError):
        registry.register(alice, parse_match({"protocol": "http", "host": "b.example", "path": "/x"}), "handoff")


WORKER = r"""
import os, socket, sys, json
sys.path.insert(0, os.environ["PORTMUX_TREE"])
from portmux.control import _framing as pc
uid, path = int(sys.argv[1]), sys.argv[2]
os.setgroups([]); os.setgid(uid); os.setuid(uid)
s = socket.socket(socket.AF_UNIX); s.connect(path)
decoder = pc.FrameDecoder()
s.sendall(pc.encode({"op": "hello", "id": 1, "version": 2}))
for n, line in enumerate(sys.argv[3:], 2):
    s.sendall(pc.encode({"op": "register", "id": n, "match": json.loads(line), "mode": "handoff"}))
import select
queued = []
while True:  # serve until the test closes stdin
    ready, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in ready and not sys.stdin.read(1):
        break
    if s not in ready:
        continue
    data, fds, _, _ = socket.recv_fds(s, 65536, 4)
    if not data:
        break
    queued.extend(fds)
    for message in decoder.feed(data):
        if message["op"] == "handoff":
            fd = queued.pop(0)
            s.sendall(pc.encode({"op": "ack", "id": message["id"]}))
            os.write(fd, b"+served by uid %d\r\n" % uid)
            os.close(fd)
        elif message["op"] == "ping":
            s.sendall(pc.encode({"op": "pong"}))
        else:
            print(json.dumps(message), flush=True)
"""


class RealUidTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("needs root to run workers as two other uids")
        if shutil.which("nc") is None:
            raise SkipTest("needs nc (netcat-openbsd)")

    def spawn(self, uid: int, path: str, *matches: dict[str, str]) -> subprocess.Popen[bytes]:
        import json

        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(uid), path, *(json.dumps(m) for m in matches)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PORTMUX_TREE": os.getcwd()},
        )

        def stop() -> None:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)
            assert process.stdout is not None
            process.stdout.close()

        self.addCleanup(stop)
        return process

    async def replies(self, process: subprocess.Popen[bytes], count: int) -> list[pc.Message]:
        import json

        assert process.stdout is not None
        lines = [await deferToThread(process.stdout.readline) for _ in range(count)]
        return [json.loads(line) for line in lines]

    async def test_bob_cannot_take_alices_payroll_clients(self) -> None:
        directory = tempfile.mkdtemp(prefix="pmx")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "c.sock")
        mux = Multiplexer(reactor, [])
        port = await mux.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        config = SimpleNamespace(endpoint=f"unix:{path}", allow_uids=[ALICE_UID, BOB_UID])
        service = ControlService(reactor, mux, config)
        service.startService()
        self.addCleanup(service.stopService)

        alice = self.spawn(ALICE_UID, path, *ALICE_KEYS)
        answers = await self.replies(alice, 4)
        self.assertEqual([a["op"] for a in answers], ["hello", "registered", "registered", "registered"])
        self.assertEqual(answers[0]["uid"], ALICE_UID)

        bob = self.spawn(BOB_UID, path, *(keys for keys, _ in CAPTURES[:3]))
        answers = await self.replies(bob, 4)
        self.assertEqual(answers[0]["uid"], BOB_UID)
        for answer, (_, victim) in zip(answers[1:], CAPTURES[:3]):
            self.assertEqual(answer["error"], "AddressReserved")
            self.assertIn(f"{victim}", answer["message"])
            self.assertIn(f"uid {ALICE_UID}", answer["message"])

        def client() -> bytes:
            out = subprocess.run(["nc", "-q", "2", "127.0.0.1", str(port.getHost().port)],
                                 input=b"payroll\r\n", capture_output=True, timeout=10, check=False)
            return out.stdout

        self.assertEqual(await deferToThread(client), b"+served by uid %d\r\n" % ALICE_UID)
        route = mux.router.select(Preamble("http", host="a.example", path="/api/v1/x"))
        self.assertIsNotNone(route)
        self.assertIn("path=/api", route.name)  # type: ignore[union-attr]


del socket, Any  # used by the worker script text only
