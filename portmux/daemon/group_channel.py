# -*- test-case-name: tests.daemon.test_group_channel,tests.daemon.test_group_workers -*-
"""The channel between a process group's parent and each child: worker routes down, sockets up.

The parent owns the control socket and the registry.  Over one UNIX stream
socketpair per child (control-protocol frames, portmux.control._framing) it sends
the registered routes — ``reset`` then one ``add`` per route when the child
connects, then every ``add``/``remove`` as it happens — and the child files them in
its own registered layer, each with a handoff target whose one "worker" is the
parent.  A connection a child routes there travels back up with SCM_RIGHTS and the
bytes the child read (portmux.targets.handoff's PendingHandoff, reused as is); the
parent adopts it into its own multiplexer, which sniffs those bytes again and
routes it as one it accepted itself: to the worker, or refused as with one process.
A kept-alive HTTP/1 connection the child serves goes up the same way at a later
request for one of those routes (portmux.targets._http_pass_on).
"""

from __future__ import annotations

import base64
import itertools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portmux.control import _framing as frames
from portmux.core.proxied import present_addresses
from portmux.core.routing import Match, Route, parse_networks
from portmux.daemon.group_metrics import OwnCounts
from portmux.targets._http_pass_on import pass_on
from portmux.targets.handoff import WorkerGroupTarget, peer_facts

log = Logger(namespace="portmux")

ACK_TIMEOUT = 5.0
"""Seconds a child waits for the parent to take a connection before refusing it."""
SYNC_TIMEOUT = 10.0
"""Seconds a starting child waits for the parent's registered routes."""


def match_keys(match: Match) -> dict[str, Any]:
    """A Match as JSON-ready keys (config ``match`` words)."""
    return match.to_keys()


def match_of(keys: dict[str, Any]) -> Match:
    """The Match ``match_keys`` described."""
    values = dict(keys)
    if "network" in values:
        values["network"] = parse_networks(values["network"])
    return Match(**values)


def _address(facts: Any) -> Any:
    """A TCP address from ``peer_facts``' JSON, or None (UNIX, or not readable)."""
    if not isinstance(facts, dict) or facts.get("type") != "TCP":
        return None
    host, port = facts.get("host"), facts.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class _Framed(Protocol):
    """Decodes frames and hands each to ``op_<name>``; a bad frame drops the channel."""

    transport: Any

    def __init__(self) -> None:
        self.decoder = frames.FrameDecoder()
        self.gone = False

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except frames.FrameError as error:
            log.error("process group channel: bad frame ({error}); closing it", error=error)
            self.transport.loseConnection()
            return
        for message in messages:
            handler: Callable[[frames.Message], None] | None = getattr(self, "op_" + message["op"], None)
            if handler is None:
                log.warn("process group channel: unknown op {op}", op=message["op"][:40])  # noqa: G010
                continue
            try:
                handler(message)
            except (KeyError, TypeError, ValueError) as error:
                log.warn("process group channel: malformed {op}: {error}", op=message["op"][:40],  # noqa: G010
                         error=error)

    def send(self, message: frames.Message) -> None:
        if not self.gone:
            self.transport.write(frames.encode(message))


# -- the parent's side: one per child ----------------------------------------


@implementer(IFileDescriptorReceiver)
class ChildLink(_Framed):
    """The parent's end of one child's channel: pushes routes, adopts the child's handoffs."""

    def __init__(self, mux: Any, label: str, listener: Any) -> None:
        super().__init__()
        self.mux = mux
        self.label = label
        self._listener = listener  # mux.listener_factory(name=label): counts what this child passes up
        self.received: list[int] = []  # descriptors in arrival order; each handoff frame takes one
        self.answer_metrics: Callable[[Any], dict[str, Any]] | None = None
        """The group's /metrics numbers, given the child's own (ProcessGroup sets it)."""

    def connectionMade(self) -> None:
        self.mux.registered_watchers.append(self.routes_changed)
        self.routes_changed("reset", None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        if self.routes_changed in self.mux.registered_watchers:
            self.mux.registered_watchers.remove(self.routes_changed)
        received, self.received = self.received, []
        for fd in received:
            os.close(fd)

    def routes_changed(self, change: str, route: Route | None) -> None:
        """The parent's registered layer changed: tell the child (a reset resends them all)."""
        if change == "add" and route is not None:
            self._send_route(route)
        elif change == "remove" and route is not None:
            self.send({"op": "remove", "name": route.name})
        else:
            self.send({"op": "reset"})
            for each in self.mux.registered_routes:
                self._send_route(each)
            self.send({"op": "synced"})

    def send_workers(self) -> None:
        """Tell the child the registry's workers (the parent's status extras), for its status page."""
        extras: dict[str, Any] = {}
        for extra in self.mux.shared("status-extras", lambda _: []):
            extras.update(extra())
        if "workers" not in extras:
            return
        try:
            self.send({"op": "workers", "workers": extras["workers"]})
        except frames.FrameError:
            log.debug("the workers listing does not fit in a frame; not sent to {label}", label=self.label)

    def _send_route(self, route: Route) -> None:
        self.send({"op": "add", "name": route.name, "match": match_keys(route.match),
                   "description": str(getattr(route.target, "description", route.kind))})

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.received.append(descriptor)

    def op_metrics(self, message: frames.Message) -> None:
        """The child is scraped: keep its numbers, answer with the group's (group_metrics.py)."""
        reply: frames.Message = {"op": "group_metrics", "id": int(message["id"])}
        if self.answer_metrics is None:
            reply["error"] = "this parent keeps no group metrics"
        else:
            reply["view"] = self.answer_metrics(message.get("report"))
        try:
            self.send(reply)
        except frames.FrameError as error:
            log.warn("the group's metrics do not fit in a frame for {label}: {error}",  # noqa: G010
                     label=self.label, error=error)
            self.send({"op": "group_metrics", "id": reply["id"], "error": "too large for one frame"})

    def op_handoff(self, message: frames.Message) -> None:
        """A child passes a connection up: adopt it, let our multiplexer sniff its bytes, ack."""
        handoff_id = int(message["id"])
        if not self.received:
            log.error("{label} sent handoff {id} without a socket", label=self.label, id=handoff_id)
            self.send({"op": "nack", "id": handoff_id, "reason": "no socket arrived"})
            return
        fd = self.received.pop(0)
        try:
            data = base64.b64decode(message.get("data", ""), validate=True)
            adopt(self.mux.reactor, self._listener, fd, data,
                  _address(message.get("peer")), _address(message.get("host")))
        except (OSError, ValueError) as error:
            log.error("adopting a connection from {label} failed: {error}", label=self.label, error=error)
            self.send({"op": "nack", "id": handoff_id, "reason": str(error)[:200]})
            return
        finally:
            os.close(fd)
        self.send({"op": "ack", "id": handoff_id})


class _Adopting(Factory):
    """Builds the listener's protocol for one adopted socket, for the peer the child saw."""

    def __init__(self, listener: Any, peer: Any) -> None:
        self.listener = listener
        self.peer = peer
        self.built: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        self.built = self.listener.buildProtocol(self.peer or addr)
        return self.built


def adopt(reactor: Any, listener: Any, fd: int, data: bytes, peer: Any = None, host: Any = None) -> Any:
    """Serve the connected socket ``fd`` (a copy is taken) as if ``listener`` had accepted it
    and already read ``data``.  ``peer``/``host``: a PROXY header's addresses, if the child had them."""
    with socket.socket(fileno=os.dup(fd)) as probe:
        family = probe.family
    factory = _Adopting(listener, peer)
    reactor.adoptStreamConnection(fd, family, factory)
    protocol = factory.built
    if protocol is None or protocol.transport is None:  # over a limit: closed at once
        return None
    protocol.mux.stats.accepted -= 1  # the child that accepted it counted it: once in the group
    if peer is not None:
        present_addresses(protocol.transport, peer, host)
    if data:
        protocol.dataReceived(data)
    return protocol


# -- the child's side ---------------------------------------------------------


def read_routes(link: ParentLink, fd: int, limit: float = SYNC_TIMEOUT) -> bool:
    """Before the child serves: read the channel (blocking, up to ``limit`` s) until the
    parent's route state is complete, so no early connection misses a worker route."""
    with socket.socket(fileno=os.dup(fd)) as channel:
        channel.settimeout(limit)
        try:
            while not link.synced:
                data = channel.recv(1 << 16)
                if not data:
                    break
                link.dataReceived(data)
        except OSError as error:
            log.warn("the parent's routes did not arrive: {error}", error=error)  # noqa: G010
    return link.synced


@dataclass(eq=False)
class _Member:
    """The parent, as the one member of every group a child knows."""

    owner: Any
    target: Any = None


@dataclass(eq=False)
class ParentGroup:
    """What WorkerGroupTarget needs of a registry group; its only candidate is the parent."""

    name: str
    match: Match
    link: ParentLink
    mode: str = "handoff"  # whatever the parent's mode: the child passes the socket up
    uid: int = -1  # the parent's registry checks uids; the description comes from there
    _member: Any = field(default=None)

    def candidates(self) -> list[Any]:
        if self.link.gone:
            return []
        if self._member is None:
            self._member = _Member(self.link)
        return [self._member]


class ParentTarget(WorkerGroupTarget):
    """A child's route to the parent: whole connections go up, and so does a kept-alive
    HTTP/1 connection at a later request for this route (portmux.targets._http_pass_on)."""

    def start_exchange(self, request: Any, route: Any, head: Any, length: Any, dispatcher: Any) -> Any:
        return pass_on(request, route, self, dispatcher)


@implementer(IFileDescriptorReceiver)
class ParentLink(_Framed):
    """A child's end of the channel: files the parent's routes, passes their connections up."""

    def __init__(self, mux: Any) -> None:
        super().__init__()
        self.mux = mux
        self.pending: dict[int, tuple[Any, Any]] = {}
        self._ids = itertools.count(1)
        self.synced = False
        """True once the parent's whole route state has arrived (``synced`` follows it)."""
        self.workers: list[Any] = []
        """The parent registry's workers, for this child's status page (a second old at most)."""
        self.own = mux.shared("own-metric-counts", OwnCounts)
        self.asked: dict[int, tuple[Deferred[dict[str, Any]], Any]] = {}  # /metrics questions
        mux.shared("group-metrics", lambda _: []).append(self.ask_metrics)
        extras: list[Callable[[], dict[str, Any]]] = mux.shared("status-extras", lambda _: [])
        extras.append(lambda: {"workers": self.workers})

    def op_workers(self, message: frames.Message) -> None:
        if isinstance(message["workers"], list):
            self.workers = message["workers"]

    def ask_metrics(self) -> Deferred[dict[str, Any]]:
        """The group's /metrics numbers from the parent (ours, newest, go with the question)."""
        if self.gone:
            return fail(ConnectionError("the parent process went away"))
        ask_id = next(self._ids)
        answer: Deferred[dict[str, Any]] = Deferred()
        timer = self.mux.reactor.callLater(ACK_TIMEOUT, self._unanswered, ask_id)
        self.asked[ask_id] = (answer, timer)
        self.send({"op": "metrics", "id": ask_id, "report": self.own.take()})
        return answer

    def _unanswered(self, ask_id: int) -> None:
        entry = self.asked.pop(ask_id, None)
        if entry is not None:
            entry[0].errback(TimeoutError(f"the parent process did not answer in {ACK_TIMEOUT:.0f} s"))

    def op_group_metrics(self, message: frames.Message) -> None:
        entry = self.asked.pop(int(message["id"]), None)
        if entry is None:
            return
        answer, timer = entry
        if timer.active():
            timer.cancel()
        view = message.get("view")
        if isinstance(view, dict) and isinstance(view.get("counts"), dict):
            answer.callback(view)
        else:
            answer.errback(ValueError(f"the parent process could not answer: {str(message.get('error'))[:200]}"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        asked, self.asked = self.asked, {}
        for answer, timer in asked.values():
            if timer.active():
                timer.cancel()
            answer.errback(ConnectionError("the parent process went away"))
        pending, self.pending = self.pending, {}
        for handoff, timer in pending.values():
            if timer.active():
                timer.cancel()
            handoff.failed("the parent process went away", False)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        os.close(descriptor)  # the parent sends none

    def op_reset(self, message: frames.Message) -> None:
        self.mux.set_registered_routes(())

    def op_synced(self, message: frames.Message) -> None:
        self.synced = True

    def op_add(self, message: frames.Message) -> None:
        name = str(message["name"])
        group = ParentGroup(name, match_of(message["match"]), self)
        target = ParentTarget(group)
        target.description = f"{str(message.get('description', name))[:200]} (through process 1)"
        self.mux.add_registered_route(Route(name, group.match, target))

    def op_remove(self, message: frames.Message) -> None:
        route = self.mux.router.registered.get(str(message["name"]))
        if route is not None:
            self.mux.remove_registered_route(route)

    def offer(self, handoff: Any) -> bool:
        """Send ``handoff``'s socket and every byte read from it to the parent (PendingHandoff calls this)."""
        if self.gone:
            return False
        handoff_id = next(self._ids)
        connection = handoff.connection
        timer = self.mux.reactor.callLater(ACK_TIMEOUT, self._timed_out, handoff_id)
        self.pending[handoff_id] = (handoff, timer)
        self.transport.sendFileDescriptor(handoff.fd)
        self.send({
            "op": "handoff", "id": handoff_id, "route": handoff.route_name,
            "data": base64.b64encode(connection.buffered + handoff.late).decode("ascii"),
            "peer": peer_facts(connection.peer), "host": peer_facts(connection.transport.getHost()),
        })
        return True

    def _settled(self, message: frames.Message) -> Any:
        entry = self.pending.pop(int(message["id"]), None)
        if entry is None:
            return None
        handoff, timer = entry
        if timer.active():
            timer.cancel()
        return handoff

    def op_ack(self, message: frames.Message) -> None:
        handoff = self._settled(message)
        if handoff is not None:
            handoff.acknowledged()
            if handoff.counted:
                # The parent routes it again and counts it on its route: counted once in the group.
                self.mux.stats.for_route(handoff.route_name).connections -= 1

    def op_nack(self, message: frames.Message) -> None:
        handoff = self._settled(message)
        if handoff is not None:
            handoff.failed(f"the parent process could not take it: {str(message.get('reason'))[:200]}", False)

    def _timed_out(self, handoff_id: int) -> None:
        entry = self.pending.pop(handoff_id, None)
        if entry is not None:
            entry[0].failed(f"the parent process did not take it in {ACK_TIMEOUT:.0f} s", False)
