# -*- test-case-name: tests.targets.test_handoff -*-
"""Hand a classified connection's socket to a registered worker process (SCM_RIGHTS).

portmux pauses the connection, sends the descriptor plus the bytes already read,
waits for the worker's acknowledgement, then ``detach``es: it closes only its own
descriptor, so the worker's copy stays open and portmux leaves the data path.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux import _twisted
from portmux.core import refusal
from portmux.core.interfaces import ITarget
from portmux.core.preamble import Preamble
from portmux.protocols import tcpmux

log = Logger(namespace="portmux")


class DetachError(Exception):
    """The transport cannot be detached (not a plain socket, or unsent bytes remain)."""


def socket_of(transport: Any) -> socket.socket:
    """The connected stream socket a plain TCP/UNIX transport owns; DetachError otherwise."""
    handle = getattr(transport, "socket", None)
    if not isinstance(handle, socket.socket) or getattr(transport, "getHandle", None) is None:
        raise DetachError(f"{type(transport).__name__} is not a plain socket transport")
    if transport.getHandle() is not handle:
        raise DetachError(f"{type(transport).__name__} wraps its socket (TLS?)")
    result: socket.socket = handle
    return result


def detach(transport: Any) -> None:
    """Stop using ``transport``'s socket and close only our descriptor of it.

    Unlike loseConnection (shutdown(2)) or abortConnection (RST), the peer
    connection stays open for any other process holding a descriptor. The
    transport's protocol then gets connectionLost(ConnectionDone).
    """
    handle = socket_of(transport)
    if _twisted.has_unsent(transport):
        raise DetachError("the transport still has unsent bytes")
    transport.stopReading()
    transport.stopWriting()
    # Point our descriptor number at an unconnected socket: whatever Twisted does
    # to it now (shutdown, SO_LINGER, close) cannot touch the shared connection.
    placeholder = socket.socket(handle.family, socket.SOCK_STREAM)
    try:
        os.dup2(placeholder.fileno(), handle.fileno())
    finally:
        placeholder.close()
    transport.connectionLost(Failure(ConnectionDone("socket handed off")))


def accept_bytes(preamble: Preamble) -> bytes:
    """What Classified.accept would write: the worker writes it before serving."""
    return tcpmux.accept_bytes() if preamble.protocol == "tcpmux" else b""


def preamble_facts(preamble: Preamble) -> dict[str, Any]:
    """The preamble's set fields, JSON-ready."""
    facts: dict[str, Any] = {}
    for name, value in preamble._asdict().items():
        if value is None or value == () or value is False:
            continue
        facts[name] = list(value) if isinstance(value, tuple) else value
    return facts


def peer_facts(address: Any) -> dict[str, Any]:
    """A Twisted address as JSON: type, host, port (or name for UNIX peers)."""
    host = getattr(address, "host", None)
    if host is not None:
        return {"type": getattr(address, "type", "TCP"), "host": host, "port": address.port}
    name = getattr(address, "name", None)
    return {"type": "UNIX", "name": name.decode("utf-8", "replace") if isinstance(name, bytes) else name}


@implementer(IProtocol)
class _Waiting(Protocol):
    """Receives the connection's events while the worker decides; reading is paused."""

    def __init__(self, pending: PendingHandoff) -> None:
        self.pending = pending

    def dataReceived(self, data: bytes) -> None:
        # Reading is paused; a transport that delivers anyway gets its bytes queued.
        self.pending.late += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.pending.closed = True


class PendingHandoff:
    """One connection on its way to a worker: try members until one acknowledges."""

    counted = True
    """The connection was counted on this route (False: a kept-alive connection moving at a later request)."""

    def __init__(self, connection: Any, group: Any, route_name: str) -> None:
        self.connection = connection
        self.group = group
        self.route_name = route_name
        self.tried: list[Any] = []
        self.late = b""
        self.closed = False
        self.done = False
        self.fd = socket_of(connection.transport).fileno()

    def message(self, handoff_id: int) -> dict[str, Any]:
        """The frame that travels with the descriptor."""
        connection = self.connection
        return {
            "op": "handoff",
            "id": handoff_id,
            "route": self.route_name,
            "data": base64.b64encode(connection.payload + self.late).decode("ascii"),
            "greeting": base64.b64encode(accept_bytes(connection.preamble)).decode("ascii"),
            "preamble": preamble_facts(connection.preamble),
            "peer": peer_facts(connection.peer),
        }

    def next(self) -> None:
        """Offer the connection to the next member with room, else refuse it."""
        if self.done:
            return
        if self.closed:
            self.done = True
            return
        busy = False
        for member in self.group.candidates():
            if any(member.owner is t for t in self.tried):
                continue
            if member.owner.offer(self):
                self.tried.append(member.owner)
                return
            busy = True
        self.done = True
        if busy:
            self.connection.refuse(refusal.UNAVAILABLE, "every worker is busy")
        else:
            self.connection.refuse(refusal.UNAVAILABLE, "no worker is available")

    def acknowledged(self) -> None:
        """The worker owns the socket now; close only our descriptor."""
        if self.done:
            return
        self.done = True
        try:
            detach(self.connection.transport)
        except Exception:  # noqa: BLE001 - logged; the worker already owns the socket
            log.failure("detaching a handed-off connection failed")

    def failed(self, reason: str, retry: bool) -> None:
        """The worker did not take it: try another member, or refuse."""
        if self.done:
            return
        if retry:
            self.next()
            return
        self.done = True
        self.connection.refuse(refusal.UNAVAILABLE, "service unavailable", detail=reason)


@implementer(ITarget)
class GroupTarget:
    """The target of one registered route: hands off to, or proxies to, its group's members.

    A mixin for the registry's group (``portmux.control``'s ``WorkerGroup``), which
    supplies ``match``, ``mode``, ``uid``, ``name`` and ``candidates()``: the group is
    its own route's target, one object per registration rather than two (issue 11).
    """

    match: Any
    mode: str
    uid: int

    @property
    def name(self) -> str:
        raise NotImplementedError  # supplied by the group this is mixed into

    def candidates(self) -> list[Any]:
        raise NotImplementedError  # supplied by the group this is mixed into

    @property
    def kind(self) -> str:
        return self.mode

    @property
    def description(self) -> str:
        return f"{self.mode} to workers of uid {self.uid} for {self.match.describe(',')}"

    def start(self) -> None:
        """Members are started by the registry when they join."""

    def stop(self) -> None:
        """Members are stopped by the registry when they leave."""

    @property
    def per_request(self) -> bool:
        """HTTP registrations in proxy mode are served per request (each member's request queue)."""
        return bool(self.mode == "proxy" and self.match.protocol == "http")

    def start_exchange(self, request: Any, route: Any, head: Any, length: Any, dispatcher: Any) -> Any:
        """Forward one HTTP request to the next member able to take it (round-robin)."""
        for member in self.candidates():
            start = getattr(member.target, "start_exchange", None)
            if start is not None:
                return start(request, route, head, length, dispatcher)
        return None

    def attach(self, connection: Any) -> IProtocol | None:
        if self.per_request and connection.preamble.protocol == "http":
            from portmux.targets.resource import serve_http

            return serve_http(connection)
        if self.mode == "proxy":
            for member in self.candidates():
                if member.target is not None:
                    result: IProtocol | None = member.target.attach(connection)
                    return result
            connection.refuse(refusal.UNAVAILABLE, "no worker is available")
            return None
        try:
            pending = PendingHandoff(connection, self, self.name)
        except DetachError as e:
            connection.refuse(refusal.BAD_GATEWAY, "cannot hand off", detail=str(e))
            return None
        connection.transport.pauseProducing()
        waiting = _Waiting(pending)
        pending.next()
        return waiting


class WorkerGroupTarget(GroupTarget):
    """A GroupTarget for a group that is not its own target (a child process's ParentGroup)."""

    kind = ""
    description = ""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.match, self.mode, self.uid = group.match, group.mode, group.uid
        self.kind = group.mode
        self.description = f"{group.mode} to workers of uid {group.uid} for {group.match.describe(',')}"

    @property
    def name(self) -> str:
        return str(self.group.name)

    def candidates(self) -> list[Any]:
        return list(self.group.candidates())
