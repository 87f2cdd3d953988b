# -*- test-case-name: tests.control.test_framing,tests.control.test_server -*-
"""The control protocol's framing: netstrings of UTF-8 JSON objects; protocol version 2.

A frame is ``<decimal length>:<JSON object>,`` so a session can be read (and
typed) with ``socat - UNIX-CONNECT:/path``. See docs/control-protocol.md.
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 2
"""Version 2 registers a ``match`` (config route keys); 1 registered an ``address`` with a ``kind``."""
VERSIONS = (1, 2)
"""Versions a server still speaks; protocol 1's addresses are translated (portmux.control._keys)."""
MAX_FRAME = 1 << 20
"""Largest frame either side accepts (a handoff carries at most the sniff buffer)."""

Message = dict[str, Any]


class FrameError(ValueError):
    """The peer sent bytes that are not a well-formed frame; drop the connection."""


def encode(message: Message) -> bytes:
    """One frame for ``message`` (a JSON-serialisable dict with an ``op``)."""
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return b"%d:%s," % (len(body), body)


class FrameDecoder:
    """Incremental decoder: feed bytes, get back the complete messages so far."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = b""
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[Message]:
        """Append ``data``; return every message completed by it, in order."""
        buffer = self._buffer + data if self._buffer else data
        messages: list[Message] = []
        start = 0
        while True:
            colon = buffer.find(b":", start, start + 9)
            if colon < 0:
                if len(buffer) - start > 8:
                    raise FrameError("frame length missing or too long")
                break
            digits = buffer[start:colon]
            if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0"):
                raise FrameError(f"bad frame length {digits[:16]!r}")
            length = int(digits)
            if length > self._max_frame:
                raise FrameError(f"frame of {length} bytes exceeds {self._max_frame}")
            end = colon + 1 + length
            if len(buffer) < end + 1:
                break
            if buffer[end : end + 1] != b",":
                raise FrameError("frame not terminated by ','")
            messages.append(decode_body(buffer[colon + 1 : end]))
            start = end + 1
        self._buffer = buffer[start:]
        return messages


def decode_body(body: bytes) -> Message:
    """Parse one frame body; it must be a JSON object with a string ``op``."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError(f"frame is not UTF-8 JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise FrameError("frame is not a JSON object with a string 'op'")
    return message
