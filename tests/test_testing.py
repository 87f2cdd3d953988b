"""portmux.testing: the helpers people use to test code built on portmux."""

from __future__ import annotations

import pytest

from portmux import Match, Preamble, Route
from portmux.core.preamble import NEED_MORE, NO, ProbeResult
from portmux.protocols.base import FunctionProbe
from portmux.protocols.ssh import probe_ssh
from portmux.testing import (
    RecordingTarget,
    assert_probe_prefixes,
    assert_probe_verdict_for_every_split,
    feed_mux,
    probe_in_chunks,
)

HELLO = b"SSH-2.0-OpenSSH_9.2\r\n"


def routes(target: RecordingTarget) -> list[Route]:
    return [Route("shell", Match(protocol="ssh"), target)]


def test_feed_mux_reports_route_preamble_and_what_the_target_got() -> None:
    target = RecordingTarget()
    fed = feed_mux(routes(target), HELLO[:5], HELLO[5:] + b"rest")
    assert fed.route is not None and fed.route.name == "shell"
    assert fed.preamble is not None and fed.preamble.protocol == "ssh"
    assert target.received == HELLO + b"rest"
    fed.send(b" more")
    assert target.protocols[0].data == HELLO + b"rest more"
    assert fed.written == b"" and not fed.closed
    assert target.started == 1
    assert target.connections[0].preamble == fed.preamble
    fed.close()
    assert target.protocols[0].lost and fed.closed


def test_feed_mux_reports_a_refusal() -> None:
    fed = feed_mux(routes(RecordingTarget()), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert fed.route is None
    assert fed.preamble is not None and fed.preamble.protocol == "http"
    assert fed.written.startswith(b"HTTP/1.1 404 ")
    assert fed.closed


def test_feed_mux_on_an_existing_multiplexer_and_its_clock() -> None:
    target = RecordingTarget()
    first = feed_mux(routes(target), b"SSH-")
    assert first.preamble is None  # still sniffing
    first.advance(60)
    assert first.closed
    second = feed_mux(first.mux, HELLO)
    assert second.route is not None and len(target.connections) == 1


def test_recording_target_accepts_like_a_service() -> None:
    target = RecordingTarget(accept="ready")
    fed = feed_mux([Route("echo", Match(protocol="tcpmux", service="echo"), target)],
                   b"echo\r\nhello")
    assert fed.written == b"+ready\r\n"
    assert target.received == b"hello"


def test_split_assertion_accepts_functions_and_probes() -> None:
    assert_probe_verdict_for_every_split(probe_ssh, HELLO)
    assert_probe_verdict_for_every_split(FunctionProbe("ssh", probe_ssh), HELLO,
                                         probe_ssh(HELLO))
    assert probe_in_chunks(probe_ssh, [HELLO[:3], HELLO[3:]]) == probe_ssh(HELLO)
    assert assert_probe_prefixes(probe_ssh, HELLO) is not None


def split_sensitive(data: bytes) -> ProbeResult:
    """A faulty probe: says NO to a two-byte read it should have waited on."""
    if len(data) == 2:
        return NO
    return Preamble(protocol="x") if len(data) >= 4 else NEED_MORE


def test_split_assertion_catches_a_split_dependent_verdict() -> None:
    with pytest.raises(AssertionError, match="split at 2"):
        assert_probe_verdict_for_every_split(split_sensitive, b"abcd")
    with pytest.raises(AssertionError, match="prefix of 2 bytes"):
        assert_probe_prefixes(split_sensitive, b"abcd")
    with pytest.raises(AssertionError, match="expected"):
        assert_probe_verdict_for_every_split(probe_ssh, HELLO, NO)


def test_the_readme_example_runs() -> None:
    """The "Testing code built on portmux" example in README.md does what it says."""
    from pathlib import Path

    from twisted.internet.testing import MemoryReactorClock

    from portmux import Multiplexer

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```python\nfrom portmux.testing") + len("```python\n")
    code = readme[start:readme.index("```", start)]
    names = {"Multiplexer": Multiplexer, "MemoryReactorClock": MemoryReactorClock,
             "my_probe": probe_ssh, "captured_bytes": HELLO}
    exec(code, names)  # noqa: S102  # our own README, run on purpose
