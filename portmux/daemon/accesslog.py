# -*- test-case-name: tests.daemon.test_accesslog -*-
"""The access log: one line per finished connection, as text (tcplog-like) or JSON lines.

Lines are buffered and flushed once a second (and on reopen and stop), so logging
costs a format and a buffered write per connection. ``reopen`` (SIGUSR1) closes
and reopens the file, for logrotate.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from portmux.core.accounting import ConnectionRecord

log = Logger(namespace="portmux")

__all__ = ["AccessLog", "format_json", "format_text"]

FLUSH_INTERVAL = 1.0


def _stamp(when: float) -> str:
    """ISO 8601 UTC with milliseconds."""
    whole = int(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((when - whole) * 1000):03d}Z"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _field(value: object) -> str:
    """A value safe in a space-separated line: '-' when absent, odd characters %-escaped."""
    if value is None or value == "":
        return "-"
    text = str(value)
    if text.isprintable() and " " not in text and '"' not in text:
        return text
    return "".join(c if c.isprintable() and c not in ' "%' else f"%{ord(c):02X}" for c in text)


def format_text(record: ConnectionRecord) -> str:
    """``time client listener protocol route>target/backend sniff/connect/total_ms in/out end facts``."""
    r = record
    chosen = f"{r.route}>{_field(r.target)}/{_field(r.backend)}" if r.route else "-"
    return (
        f"{_stamp(r.start)} {_field(r.client)} {_field(r.listener)} {_field(r.protocol)} "
        f"{_field(chosen)} {_ms(r.sniff_seconds)}/{_ms(r.connect_seconds)}/{_ms(r.duration)} "
        f"{_field(r.bytes_in)}/{_field(r.bytes_out)} {r.end} "
        f"sni={_field(r.sni)} alpn={_field(r.alpn)} host={_field(r.host)} path={_field(r.path)} "
        f"service={_field(r.service)} via={_field(r.via)}\n"
    )


def format_json(record: ConnectionRecord) -> str:
    """One JSON object per line, with ``time`` in ISO 8601."""
    fields = record.as_dict()
    fields = {"time": _stamp(record.start), **fields}
    return json.dumps(fields, separators=(",", ":")) + "\n"


FORMATS = {"text": format_text, "json": format_json}


class AccessLog:
    """Writes each ConnectionRecord it is called with to ``path`` (``-``: standard output)."""

    def __init__(self, reactor: Any, path: str = "-", fmt: str = "text") -> None:
        self.reactor = reactor
        self.path = path
        self.format_name = fmt
        self.format = FORMATS[fmt]
        self._file: IO[str] | None = None
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = reactor
        self.open()

    def open(self) -> None:
        if self.path == "-":
            # Our own descriptor for fd 1: twistd redirects sys.stdout into its log.
            self._file = os.fdopen(os.dup(1), "a", buffering=65536, encoding="utf-8")
        else:
            self._file = open(self.path, "a", buffering=65536, encoding="utf-8")  # noqa: SIM115

    def start(self) -> None:
        if not self._flusher.running:
            self._flusher.start(FLUSH_INTERVAL, now=False)

    def __call__(self, record: ConnectionRecord) -> None:
        if self._file is not None:
            self._file.write(self.format(record))

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as e:
                log.error("access log {path}: {error}", path=self.path, error=e)

    def reopen(self) -> None:
        """Close and reopen the file (after logrotate moved it)."""
        self.close()
        try:
            self.open()
        except OSError as e:
            log.error("access log {path} cannot be reopened: {error}", path=self.path, error=e)
            return
        log.info("access log {path} reopened", path=self.path)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as e:
                log.error("access log {path}: {error}", path=self.path, error=e)

    def stop(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        self.close()
