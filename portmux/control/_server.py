# -*- test-case-name: tests.control.test_server -*-
"""The control socket (server side): workers register routes and receive connections.

A UNIX stream socket, created mode 0600; peers are checked with SO_PEERCRED
against the allow-list. Protocol: portmux.control._framing, docs/control-protocol.md.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from portmux.control import _framing as pc
from portmux.control._keys import known_protocols, registration_match
from portmux.control._limits import ConnectLimiter, LogThrottle
from portmux.control._registry import Group, RegistrationError, Registry
from portmux.targets.handoff import GroupTarget, PendingHandoff

log = Logger(namespace="portmux")

HEARTBEAT = 5.0
"""Seconds between pings to each worker."""
HEARTBEAT_TIMEOUT = 15.0
"""A worker silent this long is considered gone: its routes are dropped."""
ACK_TIMEOUT = 10.0
"""A handoff not acknowledged this long is refused to the client."""
MAX_REGISTRATIONS = 1000
"""Registrations one control connection may hold ([control] max_registrations)."""
UNAUTHORIZED_RATE = 2.0
"""Refused connects answered per second per uid; more are dropped unanswered."""
UNAUTHORIZED_TOTAL_RATE = 20.0
"""Refused connects answered per second over all uids."""


def _unauthorized_logger(reactor: Any) -> Callable[[str], None]:
    """One warning per 10 s for refused peers, counting the refusals it held back."""
    latest = [""]

    def emit(suppressed: int) -> None:
        more = f" ({suppressed} more refused since the last line)" if suppressed else ""
        log.warn("control: refused {label}: uid/gid not in [control] allow_uids/allow_gids{more}",  # noqa: G010 (twisted.logger)
                 label=latest[0], more=more)

    throttle = LogThrottle(emit)

    def refused(label: str) -> None:
        latest[0] = label
        throttle(reactor.seconds())

    return refused

PeerCred = tuple[int, int, int]


def peer_credentials(transport: Any) -> PeerCred:
    """(pid, uid, gid) of a UNIX socket peer, from SO_PEERCRED."""
    handle = transport.getHandle()
    raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def supplementary_gids(pid: int) -> set[int]:
    """The peer's supplementary groups from /proc (empty if unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def unix_path(endpoint: str) -> str:
    """The path of a ``unix:/path`` or ``unix:path=/path`` endpoint string."""
    if not endpoint.startswith("unix:"):
        raise ValueError(f"control endpoint {endpoint!r} must be unix:/path")
    rest = endpoint[len("unix:"):]
    for part in rest.split(":"):
        if part.startswith("path="):
            return part[len("path="):]
    path = rest.split(":", 1)[0]
    if not path:
        raise ValueError(f"control endpoint {endpoint!r} has no path")
    return path


def prepare_path(path: str, uid: int | None = None, owners: Iterable[int | None] = ()) -> None:
    """Make ``path`` free to bind: refuse one owned by someone else or in use; drop a stale socket.

    ``owners`` are further accounts whose stale socket may be replaced (the --uid
    account a root-started daemon handed its socket to).
    """
    uid = os.getuid() if uid is None else uid
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if info.st_uid != uid and info.st_uid not in owners:
        raise OSError(errno.EEXIST, f"{path} exists and belongs to uid {info.st_uid}, not {uid}; refusing to replace it")
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: nobody listens
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a running control server")


class ControlProtocol(Protocol):
    """One worker's (or CLI's) control connection; it owns that worker's registrations."""

    pid = 0
    uid = -1
    gid = -1
    label = "?"
    transport: Any

    def __init__(self, factory: ControlFactory) -> None:
        self.factory = factory
        self.decoder = pc.FrameDecoder()
        self.pending: dict[int, tuple[PendingHandoff, Any]] = {}
        self.version = pc.VERSION
        self._ids = 0
        self._heartbeat: Any = None
        self._last_heard = 0.0
        self._authorized = False
        self._gone = False

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        try:
            self.pid, self.uid, self.gid = factory.credentials(self.transport)
        except OSError as e:
            log.warn("control: cannot read peer credentials: {error}", error=e)  # noqa: G010 (twisted.logger)
            self.transport.loseConnection()
            return
        self.label = f"pid {self.pid} uid {self.uid}"
        if not factory.authorized(self.pid, self.uid, self.gid):
            factory.log_unauthorized(self.label)
            if not factory.unauthorized.admit(self.uid, factory.reactor.seconds()):
                self.transport.abortConnection()  # over the rate: no answer, no line of its own
                return
            self.send({
                "op": "error",
                "error": "Unauthorized",
                "message": f"uid {self.uid} gid {self.gid} may not use this control socket; "
                           "add it to [control] allow_uids or allow_gids",
            })
            self.transport.loseConnection()
            return
        self._authorized = True
        factory.connections.append(self)
        self._last_heard = factory.reactor.seconds()
        self._heartbeat = factory.reactor.callLater(factory.heartbeat, self._beat)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._gone:
            return
        self._gone = True
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        if not self._authorized:
            return
        factory = self.factory
        if self in factory.connections:
            factory.connections.remove(self)
        gone = factory.registry.unregister_all(self)
        if factory.cluster is not None:
            factory.cluster.released(factory.registry, self, gone)
        if gone:
            log.info("control: {label} disconnected; dropped {routes}", label=self.label,
                     routes=", ".join(m.describe(",") for m in gone))
        pending, self.pending = self.pending, {}
        # The peer closed (or died): descriptors in flight died with it, so retry.
        # We timed it out: it may still adopt what it holds, so never offer twice.
        retry = not self.factory.timed_out(self)
        for handoff, timer in pending.values():
            if timer.active():
                timer.cancel()
            handoff.failed("the worker went away before accepting the connection", retry)

    def dataReceived(self, data: bytes) -> None:
        if not self._authorized:
            return
        self._last_heard = self.factory.reactor.seconds()
        try:
            messages, error = self.decoder.feed(data), None
        except pc.FrameError as e:
            messages, error = e.messages, e
        for message in messages:
            if self._gone:
                return
            self.handle(message)
        if error is not None and not self._gone:
            self.send({"op": "error", "error": "BadFrame", "message": str(error)})
            log.warn("control: {label} sent a bad frame: {error}", label=self.label, error=error)  # noqa: G010 (twisted.logger)
            self.transport.loseConnection()

    def send(self, message: pc.Message) -> None:
        try:
            frame = pc.encode(message)
        except pc.FrameError as e:
            frame = pc.encode({"op": "error", "id": message.get("id"), "error": "TooLarge",
                               "message": f"the {message['op']} reply does not fit in a frame: {e}"})
        self.transport.write(frame)

    # -- heartbeat ---------------------------------------------------------

    def _beat(self) -> None:
        factory = self.factory
        self._heartbeat = None
        if factory.reactor.seconds() - self._last_heard >= factory.heartbeat_timeout:
            log.warn("control: {label} silent for {timeout}s; dropping it", label=self.label,  # noqa: G010 (twisted.logger)
                     timeout=factory.heartbeat_timeout)
            factory.mark_timed_out(self)
            self.transport.abortConnection()
            return
        self.send({"op": "ping"})
        self._heartbeat = factory.reactor.callLater(factory.heartbeat, self._beat)

    # -- messages ----------------------------------------------------------

    def handle(self, message: pc.Message) -> None:
        op = message["op"]
        request_id = message.get("id")
        if request_id is not None and (type(request_id) is not int or request_id < 0):
            self.send({"op": "error", "error": "BadRequest",
                       "message": "id must be a non-negative integer (at most 2**53-1)"})
            return
        handler: Callable[[pc.Message], pc.Message | None] | None = getattr(self, f"op_{op}", None)
        if handler is None:
            self.send({"op": "error", "id": request_id, "error": "UnknownOp",
                       "message": f"unknown op {_brief(op)}"})
            return
        try:
            reply = handler(message)
        except RegistrationError as e:
            reply = self._refused(op, e)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            reply = {"op": "error", "error": "BadRequest", "message": f"malformed {op}: {_brief(e)}"}
        if isinstance(reply, Deferred):  # answered once the shared registry has (docs/scale-out.md)
            reply.addErrback(self._refused_later, op)
            reply.addCallback(self._reply, request_id)
            return
        self._reply(reply, request_id)

    def _reply(self, reply: pc.Message | None, request_id: Any) -> None:
        if reply is not None and not self._gone:
            if request_id is not None:
                reply["id"] = request_id
            self.send(reply)

    def _refused_later(self, failure: Failure, op: str) -> pc.Message:
        failure.trap(RegistrationError)
        return self._refused(op, failure.value)  # type: ignore[arg-type]

    def _refused(self, op: str, e: RegistrationError) -> pc.Message:
        log.info("control: refused {op} from {label}: {code}: {message}", op=op, label=self.label,
                 code=e.code, message=e.message)
        return {"op": "error", "error": e.code, "message": e.message}

    def op_hello(self, message: pc.Message) -> pc.Message:
        version = message.get("version")
        if type(version) is not int or version not in pc.VERSIONS:
            raise RegistrationError(
                "UnsupportedVersion",
                f"this portmux speaks control protocol versions {', '.join(map(str, pc.VERSIONS))}")
        self.version = version
        return {"op": "hello", "version": version, "versions": list(pc.VERSIONS),
                "server": "portmux", "pid": os.getpid(),
                "uid": self.uid, "heartbeat": self.factory.heartbeat,
                "max_pending": self.factory.max_pending,
                "max_registrations": self.factory.registry.max_per_owner}

    def op_register(self, message: pc.Message) -> pc.Message | Deferred[pc.Message | None]:
        if self.factory.draining:
            raise RegistrationError("ShuttingDown", "portmux is shutting down; register with its successor")
        match, deprecated = registration_match(message, self.factory.protocols())
        mode = message.get("mode", "handoff")
        if not isinstance(mode, str):
            raise RegistrationError("BadMode", "mode must be a string: handoff or proxy")
        endpoint = message.get("endpoint")
        if endpoint is not None and not isinstance(endpoint, str):
            raise RegistrationError("BadMode", "endpoint must be a client endpoint string")
        advertise = message.get("advertise")
        if advertise is not None and not isinstance(advertise, str):
            raise RegistrationError("BadAdvertise", "advertise must be a client endpoint string")
        cluster = self.factory.cluster
        if cluster is not None:
            claimed: Deferred[Any] = cluster.register(self.factory.registry, self, match, mode, endpoint, advertise)
            return claimed.addCallback(lambda group: self._claimed(group, match, deprecated))
        return self._registered(self.factory.registry.register(self, match, mode, endpoint), match, deprecated)

    def _claimed(self, group: Any, match: Any, deprecated: str | None) -> pc.Message | None:
        """The cluster-wide claim succeeded; undo it if this worker left meanwhile."""
        if self._gone:
            registry = self.factory.registry
            if registry.unregister(self, match):
                self.factory.cluster.released(registry, self, [match])
            return None
        return self._registered(group, match, deprecated)

    def _registered(self, group: Any, match: Any, deprecated: str | None) -> pc.Message:
        log.info("control: {label} registered {name} ({members} in group)", label=self.label,
                 name=group.name, members=len(group.members))
        reply: pc.Message = {"op": "registered", "route": group.name, "members": len(group.members),
                             "match": match.to_keys()}
        if deprecated is not None:
            log.warn("control: {label}: {note}", label=self.label, note=deprecated)  # noqa: G010 (twisted.logger)
            reply["deprecated"] = deprecated
        return reply

    def op_unregister(self, message: pc.Message) -> pc.Message:
        match, _ = registration_match(message, self.factory.protocols())
        if not self.factory.registry.unregister(self, match):
            raise RegistrationError("NotRegistered", f"{match.describe(',')} is not registered by this connection")
        if self.factory.cluster is not None:
            self.factory.cluster.released(self.factory.registry, self, [match])
        return {"op": "unregistered", "match": match.to_keys()}

    def op_routes(self, message: pc.Message) -> pc.Message:
        return {"op": "routes", "registered": self.factory.registry.describe(),
                "static": self.factory.static_routes(), "pid": os.getpid()}

    def op_ping(self, message: pc.Message) -> pc.Message:
        return {"op": "pong"}

    def op_pong(self, message: pc.Message) -> None:
        return None

    def op_ack(self, message: pc.Message) -> None:
        entry = self.pending.pop(_handoff_id(message), None)
        if entry is not None:
            handoff, timer = entry
            if timer.active():
                timer.cancel()
            handoff.acknowledged()

    def op_nack(self, message: pc.Message) -> None:
        entry = self.pending.pop(_handoff_id(message), None)
        if entry is not None:
            handoff, timer = entry
            if timer.active():
                timer.cancel()
            handoff.failed(f"worker declined: {_brief(message.get('reason', 'no reason'))}", True)

    # -- handoff -----------------------------------------------------------

    def offer(self, handoff: PendingHandoff) -> bool:
        """Send ``handoff`` with its descriptor; False when this worker's queue is full."""
        if self._gone or len(self.pending) >= self.factory.max_pending:
            return False
        self._ids += 1
        handoff_id = self._ids
        timer = self.factory.reactor.callLater(self.factory.ack_timeout, self._ack_timed_out, handoff_id)
        self.pending[handoff_id] = (handoff, timer)
        self.transport.sendFileDescriptor(handoff.fd)
        self.send(handoff.message(handoff_id))
        return True

    def _ack_timed_out(self, handoff_id: int) -> None:
        entry = self.pending.pop(handoff_id, None)
        if entry is not None:
            log.warn("control: {label} did not accept handoff {id} in {timeout}s", label=self.label,  # noqa: G010 (twisted.logger)
                     id=handoff_id, timeout=self.factory.ack_timeout)
            entry[0].failed("the worker did not accept the connection in time", False)


def _handoff_id(message: pc.Message) -> int:
    """The ``id`` an ack/nack answers: required, a non-negative integer (handle() checked its type)."""
    handoff_id = message.get("id")
    if handoff_id is None:
        raise ValueError("an ack or nack needs the handoff's integer 'id'")
    return int(handoff_id)


def _brief(value: object, limit: int = 120) -> str:
    """``repr``-ish text of a peer's value, cut short for error messages and logs."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


class WorkerGroup(Group, GroupTarget):
    """A registry group that is its own route's target: hands off or proxies to its members."""


def _itself(group: Group) -> Group:
    """A WorkerGroup's target: the group itself (one object per registration, not two)."""
    return group


class ControlFactory(ServerFactory):
    """Builds ControlProtocols sharing one Registry and the multiplexer."""

    def __init__(
        self,
        reactor: Any,
        mux: Any,
        allow_uids: Iterable[int] = (),
        allow_gids: Iterable[int] = (),
        reservations: Iterable[Any] = (),
        max_pending: int = 100,
        heartbeat: float = HEARTBEAT,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        ack_timeout: float = ACK_TIMEOUT,
        credentials: Callable[[Any], PeerCred] = peer_credentials,
        own_uid: int | None = None,
        make_proxy: Callable[[str], Any] | None = None,
        max_registrations: int | None = MAX_REGISTRATIONS,
        unauthorized_rate: float = UNAUTHORIZED_RATE,
        unauthorized_total_rate: float = UNAUTHORIZED_TOTAL_RATE,
        cluster: Any = None,
    ) -> None:
        self.reactor = reactor
        self.cluster = cluster
        """A portmux.control._cluster.Cluster sharing registrations through etcd, or None."""
        self.mux = mux
        self.allow_uids = frozenset(allow_uids)
        self.allow_gids = frozenset(allow_gids)
        self.max_pending = max_pending
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.ack_timeout = ack_timeout
        self.credentials = credentials
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.connections: list[ControlProtocol] = []
        self.draining = False
        """True once portmux is stopping: new registrations are refused."""
        self._timed_out: list[ControlProtocol] = []
        self._protocols: frozenset[str] | None = None
        self.unauthorized = ConnectLimiter(unauthorized_rate, unauthorized_total_rate)
        self.log_unauthorized = _unauthorized_logger(reactor)
        sink = mux if hasattr(mux, "add_registered_route") else mux.set_registered_routes
        self.registry = Registry(
            sink, reservations, _itself, make_proxy or self._make_proxy,
            max_per_owner=max_registrations, group_type=WorkerGroup,
        )

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self)

    def protocols(self) -> frozenset[str]:
        """The probe names a registration's ``protocol`` may take, found once per factory."""
        if self._protocols is None:
            self._protocols = known_protocols()
        return self._protocols

    def authorized(self, pid: int, uid: int, gid: int) -> bool:
        """portmux's own uid and root always; others by allow_uids or (any of their) gids."""
        if uid in (0, self.own_uid) or uid in self.allow_uids:
            return True
        if not self.allow_gids:
            return False
        return gid in self.allow_gids or bool(supplementary_gids(pid) & self.allow_gids)

    def mark_timed_out(self, protocol: ControlProtocol) -> None:
        self._timed_out.append(protocol)

    def timed_out(self, protocol: ControlProtocol) -> bool:
        if protocol in self._timed_out:
            self._timed_out.remove(protocol)
            return True
        return False

    def static_routes(self) -> list[dict[str, Any]]:
        """The multiplexer's configured routes, JSON-ready."""
        out = []
        for route in getattr(self.mux, "static_routes", ()):
            out.append({"name": route.name, "kind": route.kind, "match": route.match.to_keys(),
                        "description": str(getattr(route.target, "description", ""))})
        return out

    def _make_proxy(self, endpoint: str) -> Any:
        """A member's target: HTTP per request over pooled connections to its request queue
        (in-flight requests get 503 when it leaves), anything else byte-for-byte."""
        from portmux.targets.http_proxy import HttpProxyTarget

        return HttpProxyTarget(self.reactor, [endpoint], withdraw_status=503)


class _ControlPort(unix.Port):
    """A UNIX listening port that survives not being allowed to remove its socket file.

    Bound as root before twistd's --uid/--gid drop, the socket's directory may not be
    writable by the account that later stops listening; the file is then left for
    the next start's prepare_path to replace.
    """

    control_path = ""

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        except PermissionError as error:
            log.info("control: cannot remove {path} after dropping privileges ({error}); "
                     "the next start replaces it", path=self.control_path, error=error.strerror)
            tcp.Port.connectionLost(self, reason)  # the rest of what the unlink cut short


class ControlService(Service):
    """Listens on the [control] UNIX socket while the service runs.

    It binds in privilegedStartService, so with ``twistd --uid/--gid`` the socket is
    created while still root (its directory, e.g. /run/portmux, may be root's) and
    handed to ``run_as``; workers of that account may then connect.
    """

    def __init__(self, reactor: Any, mux: Any, control_config: Any, reservations: Iterable[Any] = (),
                 run_as: tuple[int | None, int | None] = (None, None), cluster: Any = None) -> None:
        self.reactor = reactor
        self.path = unix_path(str(control_config.endpoint))
        self.run_as = run_as
        self.factory = ControlFactory(
            reactor,
            mux,
            allow_uids=getattr(control_config, "allow_uids", ()) or (),
            allow_gids=getattr(control_config, "allow_gids", ()) or (),
            reservations=reservations,
            max_pending=int(getattr(control_config, "max_pending", 100) or 100),
            heartbeat=float(getattr(control_config, "heartbeat", HEARTBEAT) or HEARTBEAT),
            heartbeat_timeout=float(getattr(control_config, "heartbeat_timeout", HEARTBEAT_TIMEOUT) or HEARTBEAT_TIMEOUT),
            own_uid=run_as[0],
            max_registrations=int(getattr(control_config, "max_registrations", MAX_REGISTRATIONS)),
            unauthorized_rate=float(getattr(control_config, "unauthorized_rate", UNAUTHORIZED_RATE)),
            unauthorized_total_rate=float(
                getattr(control_config, "unauthorized_total_rate", UNAUTHORIZED_TOTAL_RATE)),
            cluster=cluster,
        )
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is None:
            self._bind()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.port is None:  # started without twistd's privileged phase (embedded)
            self._bind()

    def _bind(self) -> None:
        uid, gid = self.run_as
        handing_over = os.getuid() == 0 and uid not in (None, 0)
        prepare_path(self.path, owners=(uid,) if handing_over else ())
        others = (self.factory.allow_uids - {0, self.factory.own_uid}) or self.factory.allow_gids
        old = os.umask(0o177)
        try:
            port = _ControlPort(self.path, self.factory, backlog=50, mode=0o600,  # type: ignore[arg-type]  # str paths work
                                reactor=self.reactor)
            port.control_path = self.path
            port.startListening()  # type: ignore[no-untyped-call]
        finally:
            os.umask(old)
        self.port = port
        if handing_over:
            os.chown(self.path, uid, -1 if gid is None else gid)  # type: ignore[arg-type]
        if others:
            # Other accounts need connect permission; SO_PEERCRED does the refusing.
            os.chmod(self.path, 0o666)
        log.info("control: listening on unix:{path}", path=self.path)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        for connection in list(self.factory.connections):
            connection.transport.loseConnection()
        if port is not None:
            return port.stopListening()
        return None
