# -*- test-case-name: tests.protocols.test_mqtt,tests.protocols.test_matrix -*-
"""MQTT probe: the CONNECT packet of MQTT 3.1 (``MQIsdp``), 3.1.1 and 5.

Fixed header 0x10, a remaining-length varint, the protocol name and level, the
connect flags, keep-alive, (v5) properties, then the client identifier. The
refusal is a CONNACK with a refusal code the client reports.
"""

from __future__ import annotations

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_EXAMINED", "PROBE", "probe_mqtt", "refuse"]

MAX_EXAMINED = 4096
"""Bytes the probe reads at most; a client id ending beyond them is not reported."""

_NAMES = {b"\x00\x04MQTT": (4, 5), b"\x00\x06MQIsdp": (3,)}
"""Protocol name → the levels it may carry."""
_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}


def probe_mqtt(data: bytes) -> ProbeResult:
    """Match once the client identifier is here (or the examined bytes run out)."""
    data = data[:MAX_EXAMINED]
    if not data:
        return NEED_MORE
    if data[0] != 0x10:
        return NO
    length = _varint(data, 1)
    if length is NO or length is NEED_MORE:
        return length
    remaining, position = length  # type: ignore[misc]
    body = data[position : position + remaining]
    # Protocol name (a prefix check while it is arriving), level, flags, keep-alive.
    for name, levels in _NAMES.items():
        if body[: len(name)] == name[: len(body)]:
            break
    else:
        return NO
    if len(body) <= len(name):
        return NEED_MORE
    level = body[len(name)]
    if level not in levels:
        return NO
    flags_at = len(name) + 1
    if len(body) <= flags_at:
        return NEED_MORE
    flags = body[flags_at]
    if flags & 0x01 or (not flags & 0x04 and flags & 0x38) or (flags & 0x18) == 0x18:
        return NO  # reserved bit; will QoS/retain without a will; QoS 3
    if level < 5 and flags & 0x40 and not flags & 0x80:
        return NO  # a password without a user name (3.1.1 §3.1.2.9)
    cursor = flags_at + 3  # flags, then a 2-byte keep-alive
    if level == 5:
        properties = _varint(body, cursor)
        if properties is NO:
            return NO
        if properties is NEED_MORE:
            return _truncated(data, position + remaining, level)
        size, cursor = properties  # type: ignore[misc]
        cursor += size
    if remaining < cursor + 2:
        return NO  # the client identifier's length does not fit
    if len(body) < cursor + 2:
        return _truncated(data, position + remaining, level)
    id_length = int.from_bytes(body[cursor : cursor + 2], "big")
    if remaining < cursor + 2 + id_length:
        return NO
    client_id = body[cursor + 2 : cursor + 2 + id_length]
    if len(client_id) < id_length:
        return _truncated(data, position + remaining, level)
    try:
        text = client_id.decode("utf-8")
    except UnicodeDecodeError:
        return NO
    if "\0" in text:
        return NO
    return Preamble(protocol="mqtt", level=level, version=_VERSIONS[level], client_id=text)


def _truncated(data: bytes, end: int, level: int) -> ProbeResult:
    """NEED_MORE, or (at the examined-bytes cap) a match without the client id."""
    if len(data) < MAX_EXAMINED or end <= len(data):
        return NEED_MORE
    return Preamble(protocol="mqtt", level=level, version=_VERSIONS[level])


def _varint(data: bytes, start: int) -> tuple[int, int] | ProbeResult:
    """A Variable Byte Integer at ``start``: (value, next offset), NEED_MORE or NO."""
    value = 0
    for index in range(4):
        if start + index >= len(data):
            return NEED_MORE
        byte = data[start + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index and not byte:
                return NO  # not the shortest encoding
            return value, start + index + 1
    return NO


PROBE = FunctionProbe("mqtt", probe_mqtt)


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """A CONNACK refusing the connection: "server unavailable" (v3) or its v5 reason code."""
    if preamble.level == 5:
        code = {refusal.NOT_FOUND: 0x8C, refusal.UNAVAILABLE: 0x88}.get(status, 0x80)
        text = reason.encode("utf-8", "replace")[:100]  # every length fits one byte
        properties = b"\x1f" + len(text).to_bytes(2, "big") + text  # Reason String
        body = b"\x00" + bytes([code, len(properties)]) + properties
        return b"\x20" + bytes([len(body)]) + body
    return b"\x20\x02\x00\x03"  # session present 0, return code 3: server unavailable
