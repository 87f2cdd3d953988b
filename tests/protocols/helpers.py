"""Probe-test data: captured fixtures, mutations, a ClientHello builder.

The split and prefix assertions live in portmux.testing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from portmux.core.preamble import NEED_MORE, Preamble, ProbeResult, Verdict
from portmux.testing import (
    assert_probe_prefixes,
    assert_probe_verdict_for_every_split,
)
from portmux.testing import probe_in_chunks as feed

ProbeFunction = Callable[[bytes], ProbeResult]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

def fixture(relative: str) -> bytes:
    """The bytes of one fixture, e.g. ``fixture("tls/curl-http2.bin")``."""
    return (FIXTURES / relative).read_bytes()


def fixture_names(protocol: str) -> list[str]:
    """Relative names of every ``.bin`` fixture captured for ``protocol``."""
    return sorted(f"{protocol}/{p.name}" for p in (FIXTURES / protocol).glob("*.bin"))


def all_fixture_names() -> list[str]:
    """Relative names of every fixture, all protocols."""
    return sorted(
        f"{p.parent.name}/{p.name}" for p in FIXTURES.glob("*/*.bin")
    )


def assert_verdict(result: ProbeResult) -> None:
    """The result is a Preamble or a Verdict (no other type leaks out)."""
    assert isinstance(result, (Preamble, Verdict)), repr(result)


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """Deterministic random variants: truncations, byte flips, inserts, deletions."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(4)
            pos = rng.randrange(len(buf) + 1)
            if kind == 0:
                del buf[pos:]
            elif kind == 1 and buf:
                buf[min(pos, len(buf) - 1)] = rng.randrange(256)
            elif kind == 2:
                buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
            elif buf:
                del buf[pos : pos + rng.randint(1, 3)]
        out.append(bytes(buf))
    return out


# -- hand-built TLS ClientHellos ------------------------------------------------


def u8(n: int) -> bytes:
    """One-byte big-endian integer."""
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    """Two-byte big-endian integer."""
    return n.to_bytes(2, "big")


def u24(n: int) -> bytes:
    """Three-byte big-endian integer."""
    return n.to_bytes(3, "big")


def vec8(body: bytes) -> bytes:
    """A vector with a one-byte length prefix."""
    return u8(len(body)) + body


def vec16(body: bytes) -> bytes:
    """A vector with a two-byte length prefix."""
    return u16(len(body)) + body


def ext(ext_type: int, body: bytes) -> bytes:
    """One extension: type, length, data."""
    return u16(ext_type) + vec16(body)


def sni_ext(name: bytes) -> bytes:
    """server_name extension holding one host_name."""
    return ext(0, vec16(u8(0) + vec16(name)))


def alpn_ext(protocols: Sequence[bytes]) -> bytes:
    """application_layer_protocol_negotiation extension."""
    return ext(16, vec16(b"".join(vec8(p) for p in protocols)))


def versions_ext(versions: Sequence[int]) -> bytes:
    """supported_versions extension (ClientHello form)."""
    return ext(43, vec8(b"".join(u16(v) for v in versions)))


def key_share_ext(shares: Sequence[tuple[int, int]], seed: int = 1) -> bytes:
    """key_share extension with (group, key length) entries of pseudo-random keys."""
    rng = random.Random(seed)
    entries = b"".join(
        u16(group) + vec16(bytes(rng.randrange(256) for _ in range(size)))
        for group, size in shares
    )
    return ext(51, vec16(entries))


def client_hello_body(
    extensions: Sequence[bytes] | None,
    legacy_version: int = 0x0303,
    cipher_suites: Sequence[int] = (0x1301, 0x1302, 0xC02F),
) -> bytes:
    """A ClientHello body; ``extensions=None`` omits the extensions block."""
    body = u16(legacy_version) + bytes(range(32)) + vec8(bytes(32))
    body += vec16(b"".join(u16(c) for c in cipher_suites)) + vec8(b"\x00")
    if extensions is not None:
        body += vec16(b"".join(extensions))
    return body


def records(
    body: bytes, record_size: int = 2**14, record_version: int = 0x0301,
    handshake_type: int = 1,
) -> bytes:
    """Wrap a handshake body into handshake records of at most ``record_size``."""
    message = u8(handshake_type) + u24(len(body)) + body
    out = b""
    for i in range(0, len(message), record_size):
        chunk = message[i : i + record_size]
        out += u8(22) + u16(record_version) + vec16(chunk)
    return out


def client_hello(
    sni: bytes | None = b"a.example.com",
    alpn: Sequence[bytes] = (b"h2", b"http/1.1"),
    versions: Sequence[int] = (0x0304, 0x0303),
    extra: Sequence[bytes] = (),
    record_size: int = 2**14,
) -> bytes:
    """A complete, record-wrapped ClientHello with the usual extensions."""
    extensions = []
    if sni is not None:
        extensions.append(sni_ext(sni))
    if alpn:
        extensions.append(alpn_ext(alpn))
    if versions:
        extensions.append(versions_ext(versions))
    extensions.extend(extra)
    return records(client_hello_body(extensions), record_size)


def mlkem_client_hello(record_size: int = 2**14) -> bytes:
    """A post-quantum style hello, about 1.8 kB like a current browser's.

    X25519MLKEM768 (0x11EC, 1216-byte share) + X25519 shares, plus a
    GREASE extension and a padding extension (21) of 400 zero bytes.
    """
    groups = ext(10, vec16(u16(0x11EC) + u16(0x001D)))
    shares = key_share_ext([(0x11EC, 1216), (0x001D, 32)])
    extra = [ext(0x2A2A, b""), groups, shares, ext(21, bytes(400))]
    return client_hello(sni=b"pq.example.com", extra=extra, record_size=record_size)


def assert_fixture(probe: ProbeFunction, name: str, **fields: object) -> Preamble:
    """A fixture matches whole with ``fields``, prefix by prefix and split at every offset."""
    data = fixture(name)
    result = probe(data)
    assert isinstance(result, Preamble), f"{name}: {result!r}"
    for key, value in fields.items():
        assert getattr(result, key) == value, f"{name}: {key}={getattr(result, key)!r}"
    assert assert_probe_prefixes(probe, data) is not None
    assert_probe_verdict_for_every_split(probe, data)
    return result


def assert_fuzzed(probe: ProbeFunction, corpus: Sequence[bytes], count: int = 400) -> None:
    """Mutations of ``corpus`` give a verdict and the same one when fed a byte at a time."""
    for seed, data in enumerate(corpus):
        for variant in mutations(data, count, seed):
            result = probe(variant)
            assert_verdict(result)
            if result is not NEED_MORE:
                assert feed(probe, (variant[i : i + 1] for i in range(len(variant)))) == result
