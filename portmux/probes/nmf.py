""".NET Message Framing ([MC-NMF]) probe: the net.tcp preamble and its Via URI.

The probe matches as soon as the Via record is complete (Version, Mode, Via are
always the first three records). It does not wait for PreambleEnd: a client that
asks for a security upgrade (UpgradeRequest) waits for the server's answer before
sending PreambleEnd. ``consumed`` stays 0, so the target gets the whole preamble,
unchanged. Version 1.x with modes 1-4 is accepted; anything else matches with
``error`` set (UnsupportedVersion, UnsupportedMode, MalformedVia, ViaTooLong) so
the router refuses it with the matching framing Fault record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from portmux.nmf import decode_size
from portmux.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.probes.base import FunctionProbe

__all__ = [
    "MAX_VIA",
    "MODES",
    "PROBE",
    "Record",
    "probe_nmf",
    "read_records",
]

VERSION_RECORD = 0x00
MODE_RECORD = 0x01
VIA_RECORD = 0x02
KNOWN_ENCODING_RECORD = 0x03
EXTENSIBLE_ENCODING_RECORD = 0x04
UPGRADE_REQUEST_RECORD = 0x09
PREAMBLE_END_RECORD = 0x0C

MAX_VIA = 2048
"""Longest Via accepted, in octets (WCF's default limit)."""

MODES = {1: "singleton-unsized", 2: "duplex", 3: "simplex", 4: "singleton-sized"}
"""[MC-NMF] 2.2.3.2 mode values."""

_FIXED = {VERSION_RECORD: 2, MODE_RECORD: 1, KNOWN_ENCODING_RECORD: 1}
_SIZED = {VIA_RECORD, EXTENSIBLE_ENCODING_RECORD, UPGRADE_REQUEST_RECORD}


@dataclass(frozen=True, slots=True)
class Record:
    """One preamble record: its type and its content bytes."""

    type: int
    value: bytes


def read_records(data: bytes) -> Iterator[Record]:
    """The complete preamble records at the start of ``data``, up to PreambleEnd.

    Stops quietly at an incomplete record; raises ValueError at a record type
    that cannot appear in a preamble or a bad record size.
    """
    offset = 0
    while offset < len(data):
        kind = data[offset]
        if kind in _FIXED:
            end = offset + 1 + _FIXED[kind]
            if end > len(data):
                return
            yield Record(kind, data[offset + 1 : end])
        elif kind in _SIZED:
            size = decode_size(data, offset + 1)
            if size is None:
                return
            length, start = size
            end = start + length
            if end > len(data):
                return
            yield Record(kind, data[start:end])
        elif kind == PREAMBLE_END_RECORD:
            yield Record(kind, b"")
            return
        else:
            raise ValueError(f"record type 0x{kind:02x} cannot appear in a preamble")
        offset = end


def probe_nmf(data: bytes) -> ProbeResult:
    """Match Version, Mode, Via records; NO unless bytes 0, 3 and 5 are their types."""
    for index, expected in ((0, VERSION_RECORD), (3, MODE_RECORD), (5, VIA_RECORD)):
        if len(data) <= index:
            return NEED_MORE
        if data[index] != expected:
            return NO
        if index == 0 and len(data) > 1 and data[1] == 0:
            return NO  # major version 0 is invalid: not a framing client
    major, minor, mode = data[1], data[2], data[4]
    version = f"{major}.{minor}"
    mode_name = MODES.get(mode)
    if major != 1:
        return Preamble(protocol="nmf", version=version, error="UnsupportedVersion")
    if mode_name is None:
        return Preamble(protocol="nmf", version=version, error="UnsupportedMode")
    bad = Preamble(protocol="nmf", version=version, mode=mode_name, error="MalformedVia")
    try:
        size = decode_size(data, 6)
    except ValueError:
        return bad
    if size is None:
        return NEED_MORE
    length, start = size
    if length > MAX_VIA:
        return Preamble(protocol="nmf", version=version, mode=mode_name, error="ViaTooLong")
    if length == 0:
        return bad
    if len(data) < start + length:
        return NEED_MORE
    try:
        via = data[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return bad
    return Preamble(protocol="nmf", via=via, version=version, mode=mode_name)


PROBE = FunctionProbe("nmf", probe_nmf)
