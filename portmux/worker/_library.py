# -*- test-case-name: tests.control.test_server,tests.worker.test_library -*-
"""The worker side: register routes with portmux and serve handed-off connections.

    worker = Worker(reactor, "unix:/run/portmux/control.sock", factory)
    yield worker.connect()
    yield worker.register({"protocol": "http", "host": "example.com", "path": "/"})

Each handed-off socket is adopted into this reactor with ``factory``, and the
bytes portmux already read are replayed first, so a plain factory works unchanged.
"""

from __future__ import annotations

import base64
import os
import socket
from collections import deque
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IFileDescriptorReceiver,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux import _twisted
from portmux.control import _framing as pc
from portmux.control._keys import REGISTRATION_KEYS, translate_address
from portmux.control._registry import RegistrationError
from portmux.core.proxied import present_addresses

log = Logger(namespace="portmux.worker")


class ControlError(Exception):
    """portmux refused a request; ``code`` is its short name (e.g. ConflictingRegistration)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def control_path(control: str) -> str:
    """``unix:/path``, ``unix:path=/path`` or a bare path → the path."""
    if not control.startswith("unix:"):
        return control
    rest = control[len("unix:"):]
    for part in rest.split(":"):
        if part.startswith("path="):
            return part[len("path="):]
    return rest.split(":", 1)[0]


def peer_address(facts: Any) -> Any:
    """The real client address portmux saw, as a Twisted address."""
    if not isinstance(facts, dict) or "host" not in facts:
        return None
    host, port = str(facts["host"]), int(facts.get("port", 0))
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class Handoff:
    """What portmux told us about one handed-off connection (set as ``protocol.portmux_handoff``)."""

    def __init__(self, message: pc.Message) -> None:
        self.route: str = str(message.get("route", ""))
        self.preamble: dict[str, Any] = dict(message.get("preamble") or {})
        self.peer: IAddress | None = peer_address(message.get("peer"))
        self.data = base64.b64decode(message.get("data", ""))
        self.greeting = base64.b64decode(message.get("greeting", ""))


class _Adopting(Factory):
    """Builds the user's protocol for one adopted socket, with the real peer address."""

    def __init__(self, factory: Any, handoff: Handoff) -> None:
        self.factory = factory
        self.handoff = handoff
        self.built: Any = None
        self.transport: Any = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = self.factory.buildProtocol(self.handoff.peer or addr)
        if protocol is not None:
            try:
                protocol.portmux_handoff = self.handoff
            except AttributeError:
                pass
            make_connection = protocol.makeConnection

            def remember(transport: Any) -> None:
                self.transport = transport
                # The client portmux saw (a trusted PROXY header's source), not the socket's peer.
                present_addresses(transport, self.handoff.peer, None)
                make_connection(transport)

            protocol.makeConnection = remember  # instance attribute shadows the method
        self.built = protocol
        return protocol


def flush(reactor: Any, transport: Any) -> None:
    """Write what the replay produced now, before a half-close read can drop it.

    Twisted discards unsent bytes when a non-half-closeable protocol sees EOF,
    and the client may have half-closed while portmux held the connection.
    """
    _twisted.flush(reactor, transport)


def adopt(reactor: Any, fd: int, factory: Any, handoff: Handoff) -> Any:
    """Serve the connected socket ``fd`` with ``factory``: greeting, adopt, replay. Closes ``fd``."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
        family = probe.family
        try:
            if handoff.greeting:
                probe.send(handoff.greeting)
        finally:
            probe.close()
        one_shot = _Adopting(factory, handoff)
        reactor.adoptStreamConnection(fd, family, one_shot)
    finally:
        os.close(fd)
    protocol = one_shot.built
    if protocol is not None and handoff.data:
        protocol.dataReceived(handoff.data)
        flush(reactor, one_shot.transport)
    return protocol


@implementer(IFileDescriptorReceiver)
class WorkerProtocol(Protocol):
    """The worker's end of the control connection."""

    transport: Any

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.decoder = pc.FrameDecoder()
        self.fds: deque[int] = deque()
        self.waiting: dict[int, Deferred[pc.Message]] = {}
        self._ids = 0
        self._last_heard = 0.0
        self._watch: Any = None
        self.handoffs = 0

    def connectionMade(self) -> None:
        self._last_heard = self.worker.reactor.seconds()

    def request(self, message: pc.Message) -> Deferred[pc.Message]:
        """Send ``message`` with a fresh id; fires with the reply, errbacks with ControlError."""
        self._ids += 1
        message = dict(message, id=self._ids)
        d: Deferred[pc.Message] = Deferred()
        self.waiting[self._ids] = d
        self.transport.write(pc.encode(message))
        return d

    def send(self, message: pc.Message) -> None:
        self.transport.write(pc.encode(message))

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        self._last_heard = self.worker.reactor.seconds()
        try:
            messages = self.decoder.feed(data)
        except pc.FrameError as e:
            log.error("portmux sent a bad frame: {error}", error=e)
            self.transport.abortConnection()
            return
        for message in messages:
            self.handle(message)

    def handle(self, message: pc.Message) -> None:
        op = message["op"]
        if op == "ping":
            self.send({"op": "pong"})
            return
        if op == "handoff":
            self.handoff(message)
            return
        d = self.waiting.pop(message.get("id", -1), None)
        if d is None:
            if op == "error":
                log.error("portmux: {error}: {message}", error=message.get("error"),
                          message=message.get("message"))
            return
        if op == "error":
            d.errback(ControlError(str(message.get("error")), str(message.get("message"))))
        else:
            d.callback(message)

    def handoff(self, message: pc.Message) -> None:
        handoff_id = message.get("id")
        if not self.fds:
            log.error("portmux sent handoff {id} without a descriptor", id=handoff_id)
            self.send({"op": "nack", "id": handoff_id, "reason": "no descriptor arrived"})
            return
        fd = self.fds.popleft()
        info = Handoff(message)
        self.send({"op": "ack", "id": handoff_id})
        self.handoffs += 1
        try:
            adopt(self.worker.reactor, fd, self.worker.factory, info)
        except Exception:  # noqa: BLE001 - logged; one bad connection must not end the worker
            log.failure("adopting handed-off connection {id} failed", id=handoff_id)

    def start_watch(self, interval: float) -> None:
        """Drop the connection if portmux stays silent for three heartbeats."""
        reactor = self.worker.reactor

        def check() -> None:
            if reactor.seconds() - self._last_heard > 3 * interval:
                log.error("portmux silent for {s}s; closing the control connection", s=3 * interval)
                self.transport.abortConnection()
                return
            self._watch = reactor.callLater(interval, check)

        self._watch = reactor.callLater(interval, check)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        while self.fds:
            os.close(self.fds.popleft())
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(ControlError("Disconnected", "the control connection closed"))
        self.worker._lost(reason)


class Worker:
    """A connection to portmux's control socket serving ``factory``."""

    def __init__(self, reactor: Any, control: str, factory: Any) -> None:
        self.reactor = reactor
        self.path = control_path(control)
        self.factory = factory
        self.protocol: WorkerProtocol | None = None
        self.hello: pc.Message = {}
        self.lost: Deferred[None] = Deferred()
        self._started = False

    def connect(self) -> Deferred[Worker]:
        """Connect and say hello; fires with self."""
        endpoint = UNIXClientEndpoint(self.reactor, self.path)
        worker = self

        class _Factory(Factory):
            def buildProtocol(self, addr: IAddress | None) -> WorkerProtocol:
                return WorkerProtocol(worker)

        d: Any = endpoint.connect(_Factory())

        def connected(protocol: WorkerProtocol) -> Deferred[pc.Message]:
            self.protocol = protocol
            if not self._started:
                self._started = True
                self.factory.doStart()
            return protocol.request({"op": "hello", "version": pc.VERSION, "pid": os.getpid()})

        def greeted(reply: pc.Message) -> Worker:
            self.hello = reply
            assert self.protocol is not None
            self.protocol.start_watch(float(reply.get("heartbeat", 5.0)))
            return self

        result: Deferred[Worker] = d.addCallback(connected).addCallback(greeted)
        return result

    def register(self, match: dict[str, Any], mode: str = "handoff", endpoint: str | None = None,
                 advertise: str | None = None) -> Deferred[pc.Message]:
        """Register ``match``, config route keys (e.g. {"protocol": "tcpmux", "service": "echo"}).

        ``advertise`` (a client endpoint string) is where other nodes of a ``[registry]``
        cluster reach this worker. Fires with the reply. A protocol-1 address
        ({"kind": ...}) is still sent as one.
        """
        message: pc.Message = {"op": "register", _frame_key(match): match, "mode": mode}
        if endpoint is not None:
            message["endpoint"] = endpoint
        if advertise is not None:
            message["advertise"] = advertise
        return self._request(message)

    def unregister(self, match: dict[str, Any]) -> Deferred[pc.Message]:
        return self._request({"op": "unregister", _frame_key(match): match})

    def routes(self) -> Deferred[pc.Message]:
        """Every live route, static and registered, as portmux reports them."""
        return self._request({"op": "routes"})

    def close(self) -> Deferred[None]:
        """Close the control connection; portmux drops our routes at once."""
        if self.protocol is None or self.protocol.transport is None:
            return succeed(None)
        self.protocol.transport.loseConnection()
        return self.lost

    def _request(self, message: pc.Message) -> Deferred[pc.Message]:
        if self.protocol is None:
            raise ControlError("NotConnected", "call connect() first")
        return self.protocol.request(message)

    def _lost(self, reason: Failure | None) -> None:
        self.protocol = None
        if self._started:
            self._started = False
            self.factory.doStop()
        if not self.lost.called:
            self.lost.callback(None)


def _frame_key(match: dict[str, Any]) -> str:
    """``match`` for config route keys, ``address`` for a protocol-1 address with a kind."""
    return "address" if "kind" in match else "match"


LEGACY_FORMS = "tcpmux:NAME, http:HOST/PATH, tls:SNI or net.tcp://HOST/PATH/"


def parse_address_text(text: str) -> dict[str, Any]:
    """Command-line match: ``protocol=http,host=*,path=/app/`` (config route keys; repeat
    ``network=`` for several), or a deprecated protocol-1 form like ``tcpmux:NAME``."""
    first = text.partition(",")[0].partition("=")[0]
    if first in REGISTRATION_KEYS:
        return _parse_keys(text)
    try:
        return translate_address(_legacy_address(text))
    except RegistrationError as error:
        raise ValueError(f"address {text!r}: {error.message}") from None


def _parse_keys(text: str) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for part in text.split(","):
        key, equals, value = part.partition("=")
        if not equals or key not in REGISTRATION_KEYS:
            raise ValueError(f"match {text!r}: {part!r} is not KEY=VALUE with KEY one of {', '.join(REGISTRATION_KEYS)}")
        if key == "network":
            keys.setdefault(key, []).append(value)
        elif key in keys:
            raise ValueError(f"match {text!r}: {key} given twice")
        else:
            keys[key] = value
    return keys


def _legacy_address(text: str) -> dict[str, str]:
    """A protocol-1 address text as its ``kind`` object."""
    if text.startswith("net.tcp://"):
        return {"kind": "nettcp", "via": text}
    kind, _, rest = text.partition(":")
    if kind == "tcpmux":
        return {"kind": "tcpmux", "service": rest}
    if kind == "http":
        host, slash, path = rest.partition("/")
        return {"kind": "http", "host": host or "*", "path": slash + path if slash else "/"}
    if kind == "tls":
        return {"kind": "tls", "sni": rest}
    raise ValueError(f"address {text!r}: use KEY=VALUE,... with {', '.join(REGISTRATION_KEYS)} (or {LEGACY_FORMS})")
