# -*- test-case-name: tests.protocols.test_plugin_example -*-
"""The "toy" protocol: b"\\x7fTOY", a version byte, a one-byte length and a name.

An example drop-in probe. Installed anywhere on sys.path, this module adds the
protocol "toy" to ``portmux.probes.all_probes()``, after the built-in probes;
routes match it with ``match = { protocol = "toy", service = "NAME" }``.
"""

from __future__ import annotations

from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.probes import PluginProbe

MAGIC = b"\x7fTOY"


def probe_toy(data: bytes) -> ProbeResult:
    """Tri-state and bounded: at most 4 + 1 + 1 + 255 bytes are examined."""
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        return NO
    if len(data) < len(MAGIC) + 2:
        return NEED_MORE
    version, size = data[4], data[5]
    if version != 1 or size == 0:
        return NO
    name = data[6 : 6 + size]
    if not all(0x21 <= b < 0x7F for b in name):
        return NO
    if len(name) < size:
        return NEED_MORE
    return Preamble(protocol="toy", version="1", service=name.decode("ascii").lower())


PROBE = PluginProbe("toy", probe_toy)
