# -*- test-case-name: tests.protocols.test_xmpp,tests.protocols.test_matrix -*-
"""XMPP probe: an optional XML declaration, then the ``<stream:stream ...>`` open tag.

RFC 6120 §4.7: the initiating entity names the server in ``to``, which routes
match as ``host``. Client (``jabber:client``), server (``jabber:server``) and
component (``jabber:component:accept``, XEP-0114) streams are recognised. The
refusal is a ``host-unknown`` (or ``service-unavailable``) stream error.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from portmux.core import refusal
from portmux.core.preamble import NEED_MORE, NO, Preamble, ProbeResult
from portmux.protocols.base import FunctionProbe

__all__ = ["MAX_HEADER", "PROBE", "probe_xmpp", "refuse"]

MAX_HEADER = 2048
"""Longest XML declaration plus stream header examined."""

STREAMS_NS = "http://etherx.jabber.org/streams"
_CONTENT_NS = {"jabber:client": "client", "jabber:server": "server",
               "jabber:component:accept": "component"}
_DECLARATION = re.compile(rb"<\?xml(?:\s+[A-Za-z]+\s*=\s*(?:'[^'<>]*'|\"[^\"<>]*\"))*\s*\?>")
_OPEN = b"<stream:stream"
_BOM = b"\xef\xbb\xbf"
_ATTRIBUTE = re.compile(rb"\s+([A-Za-z_][\w.:-]*)\s*=\s*(?:'([^'<]*)'|\"([^\"<]*)\")")
_TAIL = re.compile(rb"\s*>")


def probe_xmpp(data: bytes) -> ProbeResult:
    """Match once the stream open tag's ``>`` has arrived."""
    data = data[:MAX_HEADER]
    position = 0
    if data.startswith(_BOM):
        position = len(_BOM)
    elif _BOM.startswith(data):
        return NEED_MORE  # b"" or a partial byte order mark
    if len(data) - position < 5 and b"<?xml".startswith(data[position:]):
        return NEED_MORE
    if data.startswith(b"<?xml", position):
        end = data.find(b"?>", position)
        if end < 0:
            inside = data[position + 1 :]
            if len(data) >= MAX_HEADER or b"<" in inside or b">" in inside:
                return NO
            return NEED_MORE
        declaration = _DECLARATION.match(data, position)
        if declaration is None or declaration.end() != end + 2:
            return NO
        position = declaration.end()
        while position < len(data) and data[position] in b" \t\r\n":
            position += 1
    rest = data[position:]
    if len(rest) < len(_OPEN):
        return NEED_MORE if _OPEN.startswith(rest) and len(data) < MAX_HEADER else NO
    if not rest.startswith(_OPEN):
        return NO
    position += len(_OPEN)
    attributes: dict[str, str] = {}
    while True:
        attribute = _ATTRIBUTE.match(data, position)
        if attribute is None:
            break
        value = attribute.group(2) if attribute.group(2) is not None else attribute.group(3)
        name = attribute.group(1).decode("ascii")
        if name in attributes:
            return NO  # a repeated attribute is not well-formed XML
        attributes[name] = value.decode("utf-8", "replace")
        position = attribute.end()
    tail = _TAIL.match(data, position)
    if tail is None:
        # Either an attribute still arriving, or something that is not one.
        if len(data) >= MAX_HEADER or not _could_continue(data[position:]):
            return NO
        return NEED_MORE
    if attributes.get("xmlns:stream") != STREAMS_NS:
        return NO
    kind = _CONTENT_NS.get(attributes.get("xmlns", ""))
    if kind is None:
        return NO
    to = attributes.get("to")
    host = to.strip().lower().removesuffix(".") if to else None
    return Preamble(protocol="xmpp", host=host or None, version=attributes.get("version"),
                    mode=kind)


_PARTIAL = re.compile(
    rb"(?:\s+(?:[A-Za-z_][\w.:-]*(?:\s*(?:=\s*(?:'[^'<]*|\"[^\"<]*)?)?)?)?)?\Z"
)


def _could_continue(text: bytes) -> bool:
    """True when ``text`` is white space or the start of one more attribute."""
    return _PARTIAL.match(text) is not None


PROBE = FunctionProbe("xmpp", probe_xmpp)


def refuse(preamble: Preamble, status: int, reason: str) -> bytes:
    """Open the answering stream and close it with a stream error (RFC 6120 §4.9)."""
    condition = "host-unknown" if status == refusal.NOT_FOUND else "service-unavailable"
    namespace = {"server": "jabber:server", "component": "jabber:component:accept"}.get(
        preamble.mode or "", "jabber:client")
    origin = f" from='{escape(preamble.host, {chr(39): '&apos;'})}'" if preamble.host else ""
    text = escape(reason)
    return (
        f"<?xml version='1.0'?><stream:stream{origin} xmlns='{namespace}'"
        f" xmlns:stream='{STREAMS_NS}' version='1.0'>"
        f"<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{text}</text>"
        "</stream:error></stream:stream>"
    ).encode("utf-8", "replace")
