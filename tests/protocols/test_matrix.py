"""Cross-protocol checks: every fixture is NO, early, for every other probe."""

from __future__ import annotations

import random

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols import (
    BUILTIN_ORDER,
    builtin_probes,
    dns,
    h2c,
    http,
    mqtt,
    nmf,
    openvpn,
    postgres,
    rdp,
    redis,
    socks,
    ssh,
    tcpmux,
    tls,
    xmpp,
)

from .helpers import all_fixture_names, assert_verdict, fixture, mutations

PROBES = {
    p.name: p.function
    for p in (
        tls.PROBE, h2c.PROBE, http.PROBE, ssh.PROBE, tcpmux.PROBE, nmf.PROBE,
        postgres.PROBE, redis.PROBE, mqtt.PROBE, xmpp.PROBE, socks.PROBE, rdp.PROBE,
        dns.PROBE, openvpn.PROBE,
    )
}
EARLY = 32
"""A probe must reject a foreign protocol within this many bytes."""


@pytest.mark.parametrize("name", all_fixture_names())
def test_only_own_probe_matches(name: str) -> None:
    data = fixture(name)
    own = name.split("/")[0]
    for probe_name, probe in PROBES.items():
        result = probe(data)
        if probe_name == own:
            assert isinstance(result, Preamble) and result.protocol == own
        else:
            assert result is NO, f"{probe_name} said {result!r} to {name}"


@pytest.mark.parametrize("name", all_fixture_names())
def test_foreign_protocols_rejected_early(name: str) -> None:
    data = fixture(name)
    own = name.split("/")[0]
    for probe_name, probe in PROBES.items():
        if probe_name == own:
            continue
        decided = next(n for n in range(len(data) + 1) if probe(data[:n]) is not NEED_MORE)
        assert decided <= EARLY, f"{probe_name} waited {decided} bytes on {name}"


def test_table_is_the_builtin_order() -> None:
    assert list(PROBES) == [p.name for p in builtin_probes()] == list(BUILTIN_ORDER)


def test_every_protocol_has_fixtures() -> None:
    """Every built-in probe has real-client fixtures (nmf: Mono's WCF client)."""
    have = {name.split("/")[0] for name in all_fixture_names()}
    assert set(PROBES) <= have


@pytest.mark.parametrize("name", all_fixture_names())
def test_first_match_in_order_is_own(name: str) -> None:
    """What the multiplexer decides: the first probe in order that matches is the own one."""
    data = fixture(name)
    first = next(r for r in (probe(data) for probe in PROBES.values()) if r is not NO)
    assert isinstance(first, Preamble) and first.protocol == name.split("/")[0]


def test_empty_is_need_more_everywhere() -> None:
    assert all(probe(b"") is NEED_MORE for probe in PROBES.values())


def test_fuzz_never_raises() -> None:
    rng = random.Random(1078)
    corpus = [fixture(n)[:2048] for n in all_fixture_names()]
    for probe in PROBES.values():
        for _ in range(1500):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
            assert_verdict(probe(junk))
            assert_verdict(probe(rng.choice(corpus)[:8] + junk))
        for i, data in enumerate(corpus):
            for variant in mutations(data, 150, i):
                assert_verdict(probe(variant))


def test_sslv2_hello_is_no_everywhere() -> None:
    sslv2 = b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37)
    assert all(probe(sslv2) is NO for probe in PROBES.values())


ORIGINAL = ("tls", "h2c", "http", "ssh", "tcpmux", "nmf")


def test_new_probes_never_take_what_an_original_probe_matches() -> None:
    """The probes after the original six leave those six's verdicts alone, fuzzed."""
    from .test_nmf import SPEC_DUPLEX, SPEC_MSMQ

    added = [probe for name, probe in PROBES.items() if name not in ORIGINAL]
    corpus = [fixture(n) for n in all_fixture_names() if n.split("/")[0] in ORIGINAL]
    corpus += [SPEC_DUPLEX, SPEC_MSMQ]
    checked = 0
    for seed, data in enumerate(corpus):
        for variant in [data, *mutations(data[:4096], 200, seed)]:
            if any(isinstance(PROBES[name](variant), Preamble) for name in ORIGINAL):
                checked += 1
                for probe in added:
                    assert probe(variant) is NO, (probe, variant[:40])
    assert checked > 500
