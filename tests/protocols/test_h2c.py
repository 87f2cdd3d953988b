"""Tests for the HTTP/2 prior-knowledge (h2c) probe."""

from __future__ import annotations

import pytest

from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols.h2c import PREFACE, PROBE, probe_h2c
from portmux.testing import assert_probe_prefixes, assert_probe_verdict_for_every_split

from .helpers import fixture

MATCH = Preamble(protocol="h2c", http_version="HTTP/2")


def test_curl_prior_knowledge_fixture() -> None:
    data = fixture("h2c/curl-prior-knowledge.bin")
    assert len(data) > len(PREFACE)
    assert probe_h2c(data) == MATCH
    assert assert_probe_prefixes(probe_h2c, data) == 24  # frames after it are not awaited
    assert_probe_verdict_for_every_split(probe_h2c, data)


def test_exact_preface() -> None:
    assert probe_h2c(PREFACE) == MATCH
    assert probe_h2c(PREFACE[:-1]) is NEED_MORE
    assert probe_h2c(b"") is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [b"G", b"PRX", b"PRI * HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nXX",
     b"pri * HTTP/2.0", b"\x16\x03\x01"],
)
def test_no(data: bytes) -> None:
    assert probe_h2c(data) is NO


def test_probe_object() -> None:
    assert PROBE.name == "h2c" and PROBE.probe(PREFACE) == MATCH
