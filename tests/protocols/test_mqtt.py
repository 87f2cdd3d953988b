"""Tests for the MQTT CONNECT probe and its CONNACK refusal."""

from __future__ import annotations

import pytest

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble
from portmux.protocols import REFUSERS
from portmux.protocols.mqtt import MAX_EXAMINED, PROBE, probe_mqtt, refuse
from portmux.testing import assert_probe_prefixes

from .helpers import assert_fixture, assert_fuzzed, fixture, fixture_names


def connect(client_id: bytes, level: int = 4, flags: int = 0x02, properties: bytes = b"") -> bytes:
    """A CONNECT packet (remaining length up to 2 bytes of varint)."""
    name = b"\x00\x06MQIsdp" if level == 3 else b"\x00\x04MQTT"
    body = name + bytes([level, flags]) + b"\x00\x3c"
    if level == 5:
        body += _varint(len(properties)) + properties
    body += len(client_id).to_bytes(2, "big") + client_id
    return b"\x10" + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


@pytest.mark.parametrize(
    ("name", "level", "version", "client_id"),
    [
        ("mqtt/mosquitto-pub-v31.bin", 3, "3.1", "old-client"),
        ("mqtt/mosquitto-pub-v311.bin", 4, "3.1.1", "sensor-17"),
        ("mqtt/mosquitto-pub-v5.bin", 5, "5.0", "sensor-5"),
    ],
)
def test_fixtures(name: str, level: int, version: str, client_id: str) -> None:
    assert_fixture(probe_mqtt, name, protocol="mqtt", level=level, version=version,
                   client_id=client_id)


def test_empty_client_id_and_long_properties() -> None:
    assert probe_mqtt(connect(b"")).client_id == ""  # type: ignore[union-attr]
    data = connect(b"me", level=5, properties=b"\x26" + b"\x00\x01k\x00\x01v" * 40)
    assert probe_mqtt(data).client_id == "me"  # type: ignore[union-attr]
    assert assert_probe_prefixes(probe_mqtt, data) == len(data)


def test_cap_reports_no_client_id() -> None:
    data = connect(b"me", level=5, properties=b"\x26" + b"\x00\x01k\x00\x01v" * 800)
    assert len(data) > MAX_EXAMINED
    assert probe_mqtt(data) == Preamble(protocol="mqtt", level=5, version="5.0")
    assert probe_mqtt(data[: MAX_EXAMINED - 1]) is NEED_MORE


@pytest.mark.parametrize("data", [b"", b"\x10", b"\x10\x80", b"\x10\x0f\x00\x04MQ", b"\x10\x15\x00\x04MQTT\x04"])
def test_need_more(data: bytes) -> None:
    assert probe_mqtt(data) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x20", b"\x11", b"\x30\x02", b"\x10\x80\x80\x80\x80\x01", b"\x10\x80\x00",
        b"\x10\x0f\x00\x04MQTX", b"\x10\x0f\x00\x05MQTT", b"\x10\x0f\x00\x04MQTT\x03",
        b"\x10\x0f\x00\x06MQIsdp\x04",
        connect(b"x", flags=0x03), connect(b"x", flags=0x18 | 0x04), connect(b"x", flags=0x20),
        connect(b"x", flags=0x42), connect(b"\xff\xfe"), connect(b"a\0b"),
        connect(b"abc")[:-5] + b"\x00\x09abc",  # the client id overruns the packet
        b"\x16\x03\x01\x02\x00",
    ],
)
def test_no(data: bytes) -> None:
    assert probe_mqtt(data) is NO


def test_fuzzed() -> None:
    assert_fuzzed(probe_mqtt, [fixture(n) for n in fixture_names("mqtt")])


def test_refusals() -> None:
    assert REFUSERS["mqtt"] is refuse
    assert refuse(Preamble(protocol="mqtt", level=4), refusal.NOT_FOUND, "x") == b"\x20\x02\x00\x03"
    v5 = refuse(Preamble(protocol="mqtt", level=5), refusal.NOT_FOUND, "no route " * 30)
    assert v5[0] == 0x20 and v5[1] == len(v5) - 2 and v5[3] == 0x8C
    assert v5[4] == len(v5) - 5 and v5[5] == 0x1F  # a Reason String property


def test_probe_object() -> None:
    assert PROBE.name == "mqtt" and PROBE.probe(b"\x00") is NO
