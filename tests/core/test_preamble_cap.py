"""Bug 3: ``preamble_max_bytes`` is a hard cap.  The verdict never depends on how the
bytes were split into reads, real multi-record post-quantum hellos fit the default,
and probes never examine more than the cap, whatever one read holds."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest
from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from portmux.core.mux import Multiplexer, SniffSettings
from portmux.core.routing import Match, Route
from portmux.protocols import all_probes
from portmux.testing import RecordingTarget, feed_mux
from tests.protocols.helpers import client_hello, ext, fixture, mlkem_client_hello

CAP = SniffSettings().preamble_max_bytes


def _mux(**settings: Any) -> tuple[Multiplexer, RecordingTarget]:
    from twisted.internet.task import Clock

    target = RecordingTarget()
    mux = Multiplexer(Clock(), [Route("tls", Match(protocol="tls"), target)],
                      settings=SniffSettings(**settings))
    mux.startFactory()
    return mux, target


def _splits(data: bytes) -> list[list[bytes]]:
    """One read, halves, 1000-byte reads, and a read ending exactly at the cap."""
    return [
        [data],
        [data[: len(data) // 2], data[len(data) // 2 :]],
        [data[i : i + 1000] for i in range(0, len(data), 1000)],
        [data[:CAP - 1], data[CAP - 1 : CAP + 1], data[CAP + 1 :]],
    ]


def _outcome(mux: Multiplexer, target: RecordingTarget, chunks: list[bytes]) -> tuple[Any, ...]:
    before = len(target.connections)
    fed = feed_mux(mux, *chunks)
    attached = len(target.connections) > before
    return (attached, fed.protocol.preamble, fed.transport.value(), fed.transport.disconnecting)


def _oversized_hello() -> bytes:
    """A well-formed two-record hello whose ALPN list pushes it past the cap."""
    names = [b"x-%05d-" % i + b"p" * 40 for i in range(CAP // 40)]
    return client_hello(sni=b"big.example.com", alpn=[b"h2", *names])


def test_real_multirecord_and_post_quantum_hellos_fit_the_default_cap() -> None:
    for data in (fixture("tls/openssl-multirecord.bin"), fixture("tls/synthetic-x25519mlkem768.bin"),
                 mlkem_client_hello(record_size=300)):
        mux, target = _mux()
        outcomes = {_outcome(mux, target, chunks) for chunks in _splits(data)}
        assert len(outcomes) == 1, outcomes
        attached, preamble, written, _ = outcomes.pop()
        assert attached and preamble.protocol == "tls" and written == b""


def test_oversized_hello_is_refused_identically_however_it_is_split() -> None:
    data = _oversized_hello()
    assert CAP < len(data) < 65536
    mux, target = _mux()
    outcomes = {_outcome(mux, target, chunks) for chunks in _splits(data)}
    assert len(outcomes) == 1, outcomes
    attached, preamble, written, closed = outcomes.pop()
    assert not attached and closed
    assert preamble.protocol == "tls"
    assert written == bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40])  # handshake_failure alert
    assert mux.stats.refusals["preamble_too_large"] == len(_splits(data))


def test_probes_never_see_more_than_the_cap_in_one_big_read() -> None:
    """A 10,000-extension hello in one 64 KB read: no probe is shown more than the cap."""
    extensions = [ext(1000 + i, b"") for i in range(10_000)]
    data = client_hello(extra=extensions)
    assert len(data) > 40_000
    seen: list[int] = []

    class Recording:
        def __init__(self, probe: Any) -> None:
            self.probe_ = probe
            self.name = probe.name

        def probe(self, buffer: bytes) -> Any:
            seen.append(len(buffer))
            return self.probe_.probe(buffer)

    target = RecordingTarget()
    from twisted.internet.task import Clock

    mux = Multiplexer(Clock(), [Route("tls", Match(protocol="tls"), target)],
                      probes=[Recording(p) for p in all_probes()])
    fed = feed_mux(mux, data[:65536])
    assert max(seen) == CAP
    assert fed.transport.disconnecting and not target.connections
    started = time.process_time()
    for _ in range(20):
        feed_mux(mux, data[:65536])
    assert time.process_time() - started < 1.0  # bounded: a generous sanity check, not a timing


def test_many_extensions_below_the_cap_are_refused_without_parsing_them_all() -> None:
    from portmux.core.preamble import NO
    from portmux.protocols.tls import MAX_EXTENSIONS, probe_tls

    data = client_hello(extra=[ext(1000 + i, b"") for i in range(MAX_EXTENSIONS + 10)])
    assert len(data) < CAP
    assert probe_tls(data) is NO
    assert probe_tls(client_hello(extra=[ext(1000 + i, b"") for i in range(40)])) is not NO


class _ClosingTarget(RecordingTarget):
    """Records the connection, then closes it, so the client exits at once."""

    def attach(self, connection: Any) -> Any:
        protocol = super().attach(connection)
        connection.transport.loseConnection()
        return protocol


def _run(command: list[str]) -> int:
    return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=20, check=False).returncode


class OpensslBigHelloTests(TestCase):
    """A real openssl s_client whose hello spans two records reaches its route."""

    timeout = 60

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise pytest.skip.Exception("openssl is not installed")

    async def test_openssl_two_record_hello_is_classified(self) -> None:
        target = _ClosingTarget()
        mux = Multiplexer(reactor, [Route("big", Match(sni="multi.example.com"), target)])
        port = reactor.listenTCP(0, mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        alpn = ",".join(["h2", "http/1.1"] + [f"x-portmux-{i:03d}-{'p' * 40}" for i in range(300)])
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port.getHost().port}",
                   "-servername", "multi.example.com", "-alpn", alpn]
        for attempt in range(5):  # the verdict must not depend on how the kernel split the hello
            await threads.deferToThread(_run, command)
            self.assertEqual(len(target.connections), attempt + 1)
            self.assertEqual(target.connections[-1].preamble.sni, "multi.example.com")
            self.assertGreater(len(target.connections[-1].buffered), 16384)
        self.assertEqual(dict(mux.stats.refusals), {})
