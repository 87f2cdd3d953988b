# -*- test-case-name: tests.protocols.test_openvpn,tests.protocols.test_matrix -*-
"""OpenVPN over TCP probe: the client's first packet, P_CONTROL_HARD_RESET_CLIENT_V2/V3.

A two-byte packet length, then opcode (high 5 bits: 7 = V2, 10 = V3 with
tls-crypt-v2) and key id 0, an 8-byte session id, then a layout that depends on
--tls-auth/--tls-crypt; the probe checks the layouts it can and waits for the
whole packet. A packet that is also a well-formed DNS query is left to dns.
"""

from __future__ import annotations

import struct

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe
from portmux.protocols.dns import probe_dns

__all__ = ["MAX_PACKET", "PROBE", "probe_openvpn"]

MAX_PACKET = 2048
"""Longest first packet accepted (a tls-crypt-v2 client key is at most ~1 KiB)."""

HARD_RESET_CLIENT_V2, HARD_RESET_CLIENT_V3 = 7, 10
_PLAIN = 1 + 8 + 1 + 4  # opcode, session id, ack count 0, message packet id
_TLS_CRYPT = 1 + 8 + 8 + 32  # opcode, session id, packet id + time, tag
_HMAC_SIZES = (16, 20, 28, 32, 48, 64)  # --tls-auth digests: MD5 ... SHA512


def probe_openvpn(data: bytes) -> ProbeResult:
    """Match once the whole first packet is here and one known layout fits it."""
    if len(data) < 2:
        return NEED_MORE if data[:1] <= bytes([MAX_PACKET >> 8]) else NO
    length = struct.unpack_from("!H", data)[0]
    if not _PLAIN <= length <= MAX_PACKET:
        return NO
    if len(data) < 3:
        return NEED_MORE
    opcode, key_id = data[2] >> 3, data[2] & 7
    if key_id or opcode not in (HARD_RESET_CLIENT_V2, HARD_RESET_CLIENT_V3):
        return NO
    if len(data) < 2 + length:
        return NEED_MORE
    packet = data[2 : 2 + length]
    if opcode == HARD_RESET_CLIENT_V3:
        if not _v3_fits(packet):
            return NO
    elif not _v2_fits(packet):
        return NO
    if isinstance(probe_dns(data), Preamble):
        return NO
    return Preamble(protocol="openvpn", version="2" if opcode == HARD_RESET_CLIENT_V2 else "3")


def _v2_fits(packet: bytes) -> bool:
    """No wrapping (ack count 0, packet id 0), --tls-auth, or the size of --tls-crypt."""
    if packet[9] == 0 and packet[10:14] == bytes(4):
        return True
    for size in _HMAC_SIZES:
        at = 9 + size  # packet id (1), time, ack count 0, message packet id 0
        tail = packet[at : at + 13]
        if len(tail) == 13 and tail[:4] == b"\0\0\0\x01" and tail[8:] == bytes(5):
            return True
    return len(packet) >= _TLS_CRYPT


def _v3_fits(packet: bytes) -> bool:
    """tls-crypt-v2: the wrapped client key ends the packet, its length in the last 2 bytes."""
    if len(packet) < _TLS_CRYPT + 2:
        return False
    wrapped: int = struct.unpack_from("!H", packet, len(packet) - 2)[0]
    return 32 + 2 <= wrapped <= len(packet) - _TLS_CRYPT


PROBE = FunctionProbe("openvpn", probe_openvpn)
