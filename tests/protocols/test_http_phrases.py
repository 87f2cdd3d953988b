"""HTTP refusals carry RFC 9110's reason phrases, including ones Twisted's table lacks."""

from __future__ import annotations

import pytest

from portmux.core.preamble import Preamble
from portmux.protocols.http import reason_phrase, refuse


@pytest.mark.parametrize(("status", "phrase"), [
    (400, "Bad Request"), (404, "Not Found"), (408, "Request Timeout"),
    (413, "Content Too Large"), (421, "Misdirected Request"),
    (431, "Request Header Fields Too Large"), (429, "Too Many Requests"),
    (502, "Bad Gateway"), (503, "Service Unavailable"), (504, "Gateway Timeout"),
    (499, "Client Error"), (599, "Server Error"),
])
def test_reason_phrase(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


def test_refusal_status_line_and_body_use_the_phrase() -> None:
    data = refuse(Preamble(protocol="http"), 431, "preamble too large")
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert data.endswith(b"\r\n\r\n431 Request Header Fields Too Large: preamble too large\n")
