"""Tests for the XMPP stream-header probe and its stream-error refusal."""

from __future__ import annotations

import pytest

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols import REFUSERS
from portmux.protocols.xmpp import MAX_HEADER, PROBE, probe_xmpp, refuse
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import assert_fixture, assert_fuzzed, fixture

STREAMS = "xmlns:stream='http://etherx.jabber.org/streams'"


def header(attributes: str, declaration: str = "<?xml version='1.0'?>") -> bytes:
    return f"{declaration}<stream:stream {attributes}>".encode()


def test_slixmpp_fixture() -> None:
    data = fixture("xmpp/slixmpp-client.bin")
    assert_fixture(probe_xmpp, "xmpp/slixmpp-client.bin", protocol="xmpp",
                   host="chat.example", version="1.0", mode="client")
    assert assert_probe_prefixes(probe_xmpp, data) == len(data)  # decided at the closing '>'


@pytest.mark.parametrize(
    ("data", "host", "mode"),
    [
        # RFC 6120 §4.7 examples: a declaration, double quotes, a server-to-server stream.
        (header(f"from='juliet@im.example.com' to='IM.Example.com' version='1.0' {STREAMS} "
                "xml:lang='en' xmlns='jabber:client'"), "im.example.com", "client"),
        (header(f'to="example.net" xmlns="jabber:server" {STREAMS.replace(chr(39), chr(34))}',
                '<?xml version="1.0" encoding="UTF-8" ?>\n'), "example.net", "server"),
        (b"\xef\xbb\xbf" + header(f"xmlns='jabber:component:accept' {STREAMS} to='c.example'"),
         "c.example", "component"),
        (header(f"xmlns='jabber:client' {STREAMS}", declaration=""), None, "client"),
        (header(f"\n  to='a.example'\n  xmlns='jabber:client'\n  {STREAMS}"), "a.example", "client"),
    ],
)
def test_headers(data: bytes, host: str | None, mode: str) -> None:
    result = probe_xmpp(data)
    assert isinstance(result, Preamble), result
    assert (result.protocol, result.host, result.mode) == ("xmpp", host, mode)
    assert_probe_verdict_for_every_split(probe_xmpp, data)


@pytest.mark.parametrize(
    "data",
    [b"", b"<", b"<?", b"<?xml", b"<?xml version='1.0'", b"<?xml version='1.0'?>",
     b"<?xml version='1.0'?>\n<stream:st", b"<stream:stream to='a", b"<stream:stream to",
     b"\xef\xbb", b"<stream:stream to='a.example' xmlns='jabber:client'"],
)
def test_need_more(data: bytes) -> None:
    assert probe_xmpp(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"<html>", b"<?xml version='1.0'?><html>", b"<?xml <", b"<?php echo 1; ?>",
        b"<?xml version='1.0'?><stream:streamx",
        header(f"to='a' {STREAMS}"),  # no content namespace
        header(f"to='a' xmlns='jabber:iq' {STREAMS}"),
        header("to='a' xmlns='jabber:client'"),  # no streams namespace
        header(f"to='a' to='b' xmlns='jabber:client' {STREAMS}"),
        b"<stream:stream to='a.example' xmlns='jabber:client' ~",
        b"<stream:stream to=a.example>",
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_xmpp(data) is NO


def test_bounded() -> None:
    data = header(f"to='a' xmlns='jabber:client' {STREAMS} x='{'y' * MAX_HEADER}'")
    assert probe_xmpp(data[: MAX_HEADER - 1]) is NEED_MORE
    assert probe_xmpp(data) is NO


def test_fuzzed() -> None:
    corpus = [fixture("xmpp/slixmpp-client.bin"),
              header(f"to='example.net' xmlns='jabber:server' {STREAMS}")]
    assert_fuzzed(probe_xmpp, corpus)


def test_refusal_is_a_stream_error() -> None:
    assert REFUSERS["xmpp"] is refuse
    data = refuse(Preamble(protocol="xmpp", host="a'b.example", mode="server"),
                  refusal.NOT_FOUND, "no route for xmpp <a'b.example>").decode()
    assert "<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
    assert "xmlns='jabber:server'" in data and "from='a&apos;b.example'" in data
    assert "&lt;a'b.example&gt;" in data and data.endswith("</stream:stream>")
    other = refuse(Preamble(protocol="xmpp"), refusal.UNAVAILABLE, "busy").decode()
    assert "<service-unavailable" in other and "from=" not in other


def test_probe_object() -> None:
    assert PROBE.name == "xmpp" and PROBE.probe(b"x") is NO
