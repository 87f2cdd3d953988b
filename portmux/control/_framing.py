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
    """The peer sent bytes that are not a well-formed frame; drop the connection.

    ``messages`` holds the frames completed before the bad one in the same feed.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.messages: list[Message] = []


def encode(message: Message) -> bytes:
    """One frame for ``message`` (a JSON-serialisable dict with an ``op``)."""
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return b"%d:%s," % (len(body), body)


MAX_INT = (1 << 53) - 1
"""Largest integer a frame may carry (JSON's safe integer range); floats must be finite."""


class FrameDecoder:
    """Incremental decoder: feed bytes, get back the complete messages so far."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[Message]:
        """Append ``data``; return every message completed by it, in order.

        Raises FrameError at the first frame that is malformed; the frames before it
        are lost with the connection, as the caller closes it.
        """
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        start = 0
        try:
            while True:
                colon = buffer.find(b":", start, start + 9)
                if colon < 0:
                    if len(buffer) - start > 8:
                        raise FrameError("frame length missing or too long")
                    break
                digits = bytes(buffer[start:colon])
                if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0"):
                    raise FrameError(f"bad frame length {digits[:16]!r}")
                length = int(digits)
                if length > self._max_frame:
                    raise FrameError(f"frame of {length} bytes exceeds {self._max_frame}")
                end = colon + 1 + length
                if len(buffer) < end + 1:
                    break
                if buffer[end] != 0x2C:  # ','
                    raise FrameError("frame not terminated by ','")
                messages.append(decode_body(bytes(buffer[colon + 1 : end])))
                start = end + 1
        except FrameError as error:
            error.messages = messages
            raise
        finally:
            del buffer[:start]
        return messages


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)  # Python refuses more than 4300 digits itself
    if not -MAX_INT <= value <= MAX_INT:
        raise ValueError(f"integer {text[:24]}... is out of range (at most 2**53-1)")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes) -> Message:
    """Parse one frame body; it must be a JSON object with a string ``op``.

    Numbers must be finite floats or integers within JSON's safe range; nesting too
    deep for the decoder (RecursionError) is refused too: always a FrameError.
    """
    try:
        message = json.loads(body.decode("utf-8"), parse_float=_finite, parse_int=_bounded_int,
                             parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FrameError(f"frame is not UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise FrameError("frame is not a JSON object with a string 'op'")
    return message
