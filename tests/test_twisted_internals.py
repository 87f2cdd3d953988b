"""portmux._twisted: the capability check, the switch, and the quarantine itself."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from portmux import _twisted

ROOT = Path(__file__).resolve().parent.parent

PRIVATE_USE = re.compile(
    r"(from|import)\s+twisted[\w.]*\._"  # a private Twisted module
    r"|getattr\([^,\n]+,\s*[\"']_"  # a private attribute by name
    r"|(?<!self)\.(_host|_port|_bindAddress|_path|_checkPID|_conn|_tempDataLen|_writeDisconnect\w*"
    r"|_shouldShutdown|_closeWriteConnection|_closeSocket)\b"
    r"|\.doWrite\(|\btcp\.Connection\b|\bmain\.CONNECTION_"
)


def test_this_twisted_has_every_private_name() -> None:
    assert _twisted.missing() == []


@pytest.mark.parametrize(("value", "expected"), [("1", "False"), ("0", "True"), ("", "True")])
def test_switch_is_read_once_at_import(value: str, expected: str) -> None:
    env = dict(os.environ, **{_twisted.ENV_SWITCH: value}, PYTHONPATH=str(ROOT))
    code = "from portmux import _twisted; print(_twisted.FAST_PATHS)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_no_private_twisted_name_outside_the_quarantine() -> None:
    offenders = []
    files = [*(ROOT / "portmux").rglob("*.py"), *(ROOT / "twisted" / "plugins").glob("*.py")]
    for path in files:
        if path.name == "_twisted.py" and path.parent.name == "portmux":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE_USE.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def _v2(command: int, family: int, block: bytes) -> bytes:
    return V2 + bytes([command, family]) + struct.pack("!H", len(block)) + block


V1_LINES = [
    b"PROXY TCP4 127.64.2.1 127.51.100.2 56324 443",
    b"PROXY TCP6 ::1 ::2 1 65535",
    b"PROXY TCP4 127.64.2.1 127.51.100.2 56324",
    b"PROXY TCP4 127.64.2.1 127.51.100.2 x 443",
    b"PROXY TCP4 999.0.2.1 127.51.100.2 1 2",
    b"PROXY TCP5 127.64.2.1 127.51.100.2 1 2",
    b"PROXY UNKNOWN",
    b"PROXY  TCP4 127.64.2.1 127.51.100.2 1 2",
    b"PROXY",
]

V2_HEADERS = [
    _v2(0x21, 0x11, bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 1, 2)),
    _v2(0x21, 0x21, bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 3, 4)),
    _v2(0x21, 0x31, b"/a".ljust(108, b"\x00") + b"/b".ljust(108, b"\x00")),
    _v2(0x20, 0x00, b""),
    _v2(0x21, 0x11, bytes(4)),  # address block too short
    _v2(0x31, 0x11, bytes(12)),  # version 3
    _v2(0x2F, 0x11, bytes(12)),  # unknown command
    _v2(0x21, 0x11, bytes(12) + b"tlv"),  # trailing TLV bytes
]


def _private(kind: str, data: bytes) -> object:
    from twisted.protocols.haproxy._exceptions import InvalidProxyHeader

    parse = _twisted._private_v1 if kind == "v1" else _twisted._private_v2
    try:
        return parse(data)
    except (InvalidProxyHeader, ValueError):
        return None


@pytest.mark.parametrize("line", V1_LINES)
def test_public_v1_fallback_agrees_with_the_private_parser(line: bytes) -> None:
    assert _twisted._public_parse(line + b"\r\n") == _private("v1", line)


@pytest.mark.parametrize("header", V2_HEADERS)
def test_public_v2_fallback_agrees_with_the_private_parser(header: bytes) -> None:
    assert _twisted._public_parse(header) == _private("v2", header)


class _Reader:
    """A socket end an epoll reactor watches: records what each readiness event read."""

    def __init__(self, skt: socket.socket) -> None:
        self.skt = skt
        self.read: list[bytes] = []
        self.writable = 0

    def fileno(self) -> int:
        return self.skt.fileno()

    def logPrefix(self) -> str:
        return "reader"

    def doRead(self) -> None:
        self.read.append(self.skt.recv(100))

    def doWrite(self) -> None:
        self.writable += 1

    def connectionLost(self, reason: object) -> None:
        """Not reached here."""


@pytest.mark.skipif(not _twisted.FAST_PATHS, reason="fast paths switched off")
def test_lean_dispatch_delivers_every_ready_descriptor() -> None:
    """The lean poll hands each ready descriptor its event, as Twisted's own poll does."""
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    assert _twisted.lean_dispatch(reactor) is True
    assert isinstance(vars(reactor)["doIteration"], _twisted.LeanPoll)
    assert _twisted.lean_dispatch(reactor) is False  # once
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        readers = [_Reader(end) for end, _ in pairs]
        for reader in readers:
            reactor.addReader(reader)
        reactor.addWriter(readers[2])
        pairs[0][1].send(b"ping")
        pairs[1][1].send(b"pong")
        reactor.doIteration(1.0)
        assert [r.read for r in readers] == [[b"ping"], [b"pong"], []]
        assert readers[2].writable == 1
        reactor.doIteration(0)  # nothing new to read
        assert [len(r.read) for r in readers] == [1, 1, 0]
    finally:
        for end, peer in pairs:
            end.close()
            peer.close()
        reactor._poller.close()


def test_lean_dispatch_leaves_other_reactors_alone() -> None:
    """Not Twisted's stock epoll reactor: nothing changes (the public fallback)."""
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.selectreactor import SelectReactor

    class OwnPoll(EPollReactor):
        def doPoll(self, timeout: float | None) -> None:
            EPollReactor.doPoll(self, timeout)

        doIteration = doPoll

    for reactor in (SelectReactor(), OwnPoll()):
        assert _twisted.lean_dispatch(reactor) is False
        assert "doIteration" not in vars(reactor)


class LocalPortTests(TestCase):
    """local_port: the listening port of an accepted connection, or what getHost says."""

    async def test_accepted_connection_and_a_proxy_header_destination(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.address import IPv4Address
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Factory, Protocol

        from portmux.core.proxied import present_addresses

        accepted: Deferred[object] = Deferred()

        class Grab(Protocol):
            def connectionMade(self) -> None:
                accepted.callback(self.transport)

        listening = reactor.listenTCP(0, Factory.forProtocol(Grab), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        number = listening.getHost().port
        client = socket.create_connection(("127.0.0.1", number))
        self.addCleanup(client.close)
        transport: Any = await accepted
        self.addCleanup(transport.loseConnection)
        self.assertEqual(_twisted.local_port(transport), number)
        self.assertEqual(transport.getHost().port, number)
        present_addresses(transport, None, IPv4Address("TCP", "127.0.0.5", 8443))
        self.assertEqual(_twisted.local_port(transport), 8443)
