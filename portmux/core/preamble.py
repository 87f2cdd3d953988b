# -*- test-case-name: tests.control.test_registry,tests.core.test_mux,tests.core.test_routing,tests.daemon.test_config -*-
"""What a probe learned from a connection's first bytes, and the probe verdicts."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Verdict(enum.Enum):
    """The two non-matching answers a probe can give."""

    NO = "no"
    NEED_MORE = "need-more"


NO = Verdict.NO
NEED_MORE = Verdict.NEED_MORE


class Preamble(NamedTuple):
    """Immutable facts about one connection's opening bytes.

    ``consumed`` counts leading bytes the multiplexer answers itself (the TCPMUX
    service line, a PROXY header); targets receive ``buffered[consumed:]``.
    A NamedTuple rather than a frozen dataclass: one is built per connection, and
    a frozen dataclass of this width costs about six times as much to construct.
    """

    protocol: str
    consumed: int = 0
    # TLS (ClientHello, or copied from the outer layer after termination)
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    tls_versions: tuple[str, ...] = ()
    tls_version: str | None = None
    tls_terminated: bool = False
    # HTTP/1.x and h2c
    method: str | None = None
    target: str | None = None
    path: str | None = None
    host: str | None = None
    http_version: str | None = None
    # TCPMUX / moniker naming
    service: str | None = None
    # .NET Message Framing (``mode`` is also the XMPP stream kind: client, server,
    # component; ``host`` above is also the XMPP ``to`` domain)
    via: str | None = None
    mode: str | None = None
    # SSH and other banner protocols; also the SOCKS (5, 4, 4a), MQTT, PostgreSQL
    # and OpenVPN (hard reset 2 or 3) versions
    software: str | None = None
    version: str | None = None
    # PostgreSQL (user, database; ``request`` is ssl, gssenc, cancel or startup)
    user: str | None = None
    database: str | None = None
    request: str | None = None
    # Redis: the first command, upper-case
    command: str | None = None
    # MQTT CONNECT: client identifier and protocol level (3, 4 or 5)
    client_id: str | None = None
    level: int | None = None
    # RDP: the ``Cookie: mstshash=`` user name
    cookie: str | None = None
    # A recognised preamble that cannot be routed (e.g. nmf "UnsupportedVersion");
    # the router matches no route and the protocol's refusal explains it.
    error: str | None = None

    def replace(self, **changes: Any) -> Preamble:
        """A copy with ``changes`` applied (like dataclasses.replace)."""
        return self._replace(**changes)


ProbeResult = Preamble | Verdict
