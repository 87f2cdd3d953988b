"""PROXY protocol writer and the parser adapter over twisted.protocols.haproxy."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial.unittest import SynchronousTestCase

from portmux.core.preamble import NEED_MORE, NO
from portmux.protocols.proxyheader import ProxyHeader, header, parse_header, v1_header, v2_header

SRC4 = IPv4Address("TCP", "127.64.2.10", 50123)
DST4 = IPv4Address("TCP", "127.51.100.1", 443)
SRC6 = IPv6Address("TCP", "::1", 40000)
DST6 = IPv6Address("TCP", "::2", 8443)


class WriterTests(SynchronousTestCase):
    """The writer's bytes, checked against the spec and Twisted's own parsers."""

    def test_v1_tcp4_exact(self) -> None:
        self.assertEqual(
            v1_header(SRC4, DST4), b"PROXY TCP4 127.64.2.10 127.51.100.1 50123 443\r\n"
        )

    def test_v1_parsed_by_twisted(self) -> None:
        for src, dst in ((SRC4, DST4), (SRC6, DST6)):
            info, rest = V1Parser().feed(v1_header(src, dst) + b"tail")
            self.assertEqual((info.source, info.destination, rest), (src, dst, b"tail"))

    def test_v1_unknown_for_unix(self) -> None:
        self.assertEqual(v1_header(UNIXAddress(b"/a"), UNIXAddress(b"/b")), b"PROXY UNKNOWN\r\n")

    def test_v2_tcp4_exact(self) -> None:
        expected = (
            b"\r\n\r\n\x00\r\nQUIT\n"  # signature
            b"\x21\x11\x00\x0c"  # v2 PROXY, TCP over IPv4, 12 address bytes
            b"\x7f\x40\x02\x0a\x7f\x33\x64\x01"
            b"\xc3\xcb\x01\xbb"
        )
        self.assertEqual(v2_header(SRC4, DST4), expected)

    def test_v2_parsed_by_twisted(self) -> None:
        info, rest = V2Parser().feed(v2_header(SRC4, DST4) + b"tail")
        self.assertEqual((info.source, info.destination, rest), (SRC4, DST4, b"tail"))
        info, rest = V2Parser().feed(v2_header(SRC6, DST6) + b"tail")
        self.assertEqual(info.source.host, "0:0:0:0:0:0:0:1")  # Twisted spells every group
        self.assertEqual((info.source.port, info.destination.port, rest), (40000, 8443, b"tail"))

    def test_v2_unix(self) -> None:
        data = v2_header(UNIXAddress(b"/run/a.sock"), UNIXAddress(b"/run/b.sock"))
        self.assertEqual(len(data), 16 + 216)
        info, _ = V2Parser().feed(data)
        self.assertEqual(info.source, UNIXAddress(b"/run/a.sock"))

    def test_v2_local_for_unknown(self) -> None:
        data = v2_header(None, None)
        self.assertEqual(data[12:16], b"\x20\x00\x00\x00")
        info, _ = V2Parser().feed(data)
        self.assertIsNone(info.source)

    def test_mixed_families_mapped(self) -> None:
        """An IPv4 peer on an IPv6 listener is written as an IPv4-mapped IPv6 address."""
        line = v1_header(SRC4, DST6)
        self.assertEqual(line, b"PROXY TCP6 ::ffff:7f40:20a ::2 50123 8443\r\n")
        info, _ = V2Parser().feed(v2_header(SRC4, DST6))
        self.assertIsInstance(info.source, IPv6Address)

    def test_header_dispatch(self) -> None:
        self.assertEqual(header("v1", SRC4, DST4), v1_header(SRC4, DST4))
        self.assertEqual(header("v2", SRC4, DST4), v2_header(SRC4, DST4))
        self.assertRaises(ValueError, header, "v3", SRC4, DST4)


class ParserTests(SynchronousTestCase):
    """parse_header: tri-state over any prefix of a header."""

    def test_round_trip_every_split(self) -> None:
        """Each prefix is NEED_MORE; the whole header parses with its length."""
        for version, data in ((1, v1_header(SRC4, DST4)), (2, v2_header(SRC6, DST6))):
            for cut in range(len(data)):
                self.assertIs(parse_header(data[:cut]), NEED_MORE, (version, cut))
            parsed = parse_header(data + b"payload")
            self.assertEqual(parsed, ProxyHeader(version, *(
                (SRC4, DST4) if version == 1 else (SRC6, DST6)), len(data)))

    def test_v1_unknown(self) -> None:
        self.assertEqual(parse_header(b"PROXY UNKNOWN\r\nx"), ProxyHeader(1, None, None, 15))
        self.assertEqual(
            parse_header(b"PROXY UNKNOWN 127.1.3.4 127.5.7.8 1 2\r\n"), ProxyHeader(1, None, None, 39)
        )

    def test_not_a_header(self) -> None:
        for data in (
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP9 127.1.3.4 127.5.7.8 1 2\r\n",
            b"PROXY TCP4 127.1.3.4 127.5.7.8 x 2\r\n",
            b"PROXY TCP4 127.1.3.4\r\n",
            b"PROXY " + b"1" * 200,
            b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00",
            b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x00",  # version 3
            b"\x16\x03\x01",
        ):
            self.assertIs(parse_header(data), NO, data)

    def test_empty_needs_more(self) -> None:
        self.assertIs(parse_header(b""), NEED_MORE)

    def test_v2_short_address_block(self) -> None:
        """A TCP4 header whose address block is too short is NO, not an exception."""
        self.assertIs(parse_header(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd"), NO)
