# -*- test-case-name: tests.daemon.test_group -*-
"""``processes = N``: the parent serves and keeps N - 1 children serving the same listening sockets.

The children inherit the parent's listening sockets (one shared socket per
listener; the kernel hands each new connection to whichever process accepts
it first) and run the same config with no control socket.  The parent owns
the control socket and the registry; each child gets a channel to it
(portmux.daemon.group_channel) carrying the registered routes down and the
connections routed to them back up.  The parent passes
SIGHUP on (each child reloads the same file), stops them on a graceful stop,
and replaces a child that dies, with a delay that grows while children keep
dying young.  The child side is portmux.daemon.group_child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from portmux.daemon.admin.metric_counts import summed
from portmux.daemon.group_metrics import GroupCounts, ended_status

log = Logger(namespace="portmux")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")
"""The timestamp a child's log line starts with (the parent's log adds its own)."""

FIRST_FD = 3
"""The children's listening sockets are inherited from descriptor 3 up, in listener order;
the channel to the parent comes right after them."""
RESPAWN_DELAY = 0.2
MAX_RESPAWN_DELAY = 30.0
STOP_GRACE = 5.0
"""Seconds past the daemon's grace period children get after SIGTERM before SIGKILL."""


class _Child(ProcessProtocol):
    """One child process, as the parent sees it."""

    def __init__(self, group: ProcessGroup, slot: int, generation: int = 0) -> None:
        self.group = group
        self.slot = slot
        self.generation = generation  # which spawn of the slot (GroupCounts drops late reports)
        self.ended: Deferred[None] = Deferred()
        self.started = group.reactor.seconds()
        self.partial = b""
        self.reports = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """fd 1: the child's counters, one JSON line each; fd 2: its log, relayed into ours."""
        if childFD == 1:
            self.reports += data
            *lines, self.reports = self.reports.split(b"\n")
            if lines:
                try:
                    self.group.reported(self.slot, json.loads(lines[-1]), self.generation)
                except ValueError:
                    log.warn("process {slot} sent unreadable counters", slot=self.slot + 1)  # noqa: G010
            return
        self.partial += data
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            text = _STAMP.sub("", line.decode("utf-8", "replace")).rstrip()
            if text:
                log.info("[process {slot}] {line}", slot=self.slot + 1, line=text)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.group.child_ended(self, reason)


def _child_environment() -> dict[str, str]:
    """Our environment minus systemd's: only the parent talks to systemd (sd_notify, sockets)."""
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC"):
        env.pop(name, None)
    return env


def _reuseport_twin(port: Any, family: int, backlog: int) -> socket.socket | None:
    """A new listening socket on ``port``'s TCP address, both with SO_REUSEPORT; None if not possible."""
    reuse = getattr(socket, "SO_REUSEPORT", None)
    if reuse is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        original = socket.socket(fileno=os.dup(port.fileno()))
        try:
            original.setsockopt(socket.SOL_SOCKET, reuse, 1)
            address = original.getsockname()
        finally:
            original.close()  # only our duplicate descriptor
        twin = socket.socket(family, socket.SOCK_STREAM)
        try:
            twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            twin.setsockopt(socket.SOL_SOCKET, reuse, 1)
            twin.bind(address)
            twin.listen(backlog)
        except OSError:
            twin.close()
            raise
    except OSError as e:
        log.info("SO_REUSEPORT unavailable ({error}): the processes share one socket", error=e)
        return None
    twin.set_inheritable(True)
    return twin


class ProcessGroup(Service):
    """Keeps ``count - 1`` children serving ``listeners``' sockets (ListenerService objects)."""

    def __init__(self, reactor: Any, count: int, listeners: Sequence[Any], config_path: str | None,
                 plain: bool = False, stats: Any = None, mux: Any = None) -> None:
        self.reactor = reactor
        self.mux = mux  # the parent's Multiplexer: its registered routes go to every child
        # The parent multiplexer's Stats: children's counters are kept there.
        self.stats = mux.stats if mux is not None else stats
        self._passed_up: dict[int, Any] = {}  # slot → listener factory for connections it passes up
        self.links: dict[int, Any] = {}  # slot → its channel's ChildLink
        self.count = count
        self.listeners = list(listeners)
        self.config_path = config_path
        self.plain = plain  # listeners from --listen: no PROXY-header trust
        self.children: dict[int, Any] = {}  # slot → IProcessTransport
        self.protocols: dict[int, _Child] = {}
        self.delay = RESPAWN_DELAY
        self.stopping = False
        self._stopped: Any = None
        self.counts: GroupCounts | None = None
        self._ended_status: dict[int, dict[str, Any]] = {}  # slot → its ended children's status totals
        if mux is not None:  # /metrics of any process answers from here (daemon/group_metrics.py)
            self.counts = GroupCounts(mux)
            mux.shared("group-metrics", lambda _: []).append(self.metrics_view)

    def metrics_view(self) -> dict[str, Any]:
        """The group's /metrics numbers: ours live, the children's newest, ended children's totals."""
        assert self.counts is not None
        return dict(self.counts.view(1 + len(self.children)), answering=1)

    def pids(self) -> list[int]:
        """Process ids of the running children."""
        return [t.pid for t in self.children.values() if t.pid is not None]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.stopping = False
        self._stopped = None
        for slot in range(1, self.count):
            self._spawn(slot)

    def _sockets(self) -> list[tuple[Any, int]]:
        """(socket or descriptor, address family) to give one new child, in listener order.

        A TCP listener gets a socket of the child's own, bound to the same address
        with SO_REUSEPORT (the parent's gets the option too), so the kernel spreads
        new connections over the processes and wakes only the one it chose.  Other
        listeners (UNIX, or when that fails) share the parent's socket: every
        process is woken, the first to accept wins.
        """
        found: list[tuple[Any, int]] = []
        for listener in self.listeners:
            port = listener.port
            family = getattr(port, "addressFamily", socket.AF_INET)
            backlog = int(getattr(listener, "backlog", 0) or 4096)
            found.append((_reuseport_twin(port, family, backlog) or port.fileno(), family))
        return found

    def _spawn(self, slot: int) -> None:
        sockets = self._sockets()
        args = [sys.executable, "-m", "portmux.daemon.group_child", "--parent", str(os.getpid())]
        if self.config_path is not None:
            args += ["--config", self.config_path]
        if self.plain:
            args.append("--plain")
        for number, (_, family) in enumerate(sockets):
            args += ["--socket", f"{FIRST_FD + number}:{int(family)}"]
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}  # their logs come back to us
        for number, (fd, _) in enumerate(sockets):
            child_fds[FIRST_FD + number] = fd if isinstance(fd, int) else fd.fileno()
        generation = self.counts.started(slot) if self.counts is not None else 0
        channel = self._channel(slot, generation)
        if channel is not None:
            child_fds[FIRST_FD + len(sockets)] = channel.fileno()
            args += ["--channel", str(FIRST_FD + len(sockets))]
        protocol = _Child(self, slot, generation)
        self.protocols[slot] = protocol
        try:
            self.children[slot] = self.reactor.spawnProcess(
                protocol, sys.executable, args, env=_child_environment(), childFDs=child_fds
            )
        finally:
            for fd, _ in sockets:
                if not isinstance(fd, int):
                    fd.close()  # the child has its copy; it closes with the child
            if channel is not None:
                channel.close()
        log.info("process {slot} of {count} started (pid {pid})", slot=slot + 1, count=self.count,
                 pid=self.children[slot].pid)

    def _channel(self, slot: int, generation: int) -> socket.socket | None:
        """A socketpair to the new child: our end served by a ChildLink; its end returned."""
        if self.mux is None:
            return None
        from portmux.daemon.group_channel import ChildLink

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        label = f"process {slot + 1}"
        listener = self._passed_up.get(slot)
        if listener is None:
            listener = self._passed_up[slot] = self.mux.listener_factory(name=label)
        link = self.links[slot] = ChildLink(self.mux, label, listener)
        link.answer_metrics = lambda report: self._answer_metrics(slot, generation, report)
        try:
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                               Factory.forProtocol(lambda: link))
        finally:
            ours.close()  # the reactor has its own copy
        theirs.set_inheritable(True)
        return theirs

    def _answer_metrics(self, slot: int, generation: int, report: Any) -> dict[str, Any]:
        """A child asks for the group's /metrics numbers, sending its own newest."""
        assert self.counts is not None
        self.counts.reported(slot, generation, report)
        return dict(self.metrics_view(), answering=slot + 1)

    def reported(self, slot: int, counters: dict[str, Any], generation: int = 0) -> None:
        """A child's own counters arrived: keep them, tell every child the others' counters,
        and tell this child the registry's workers (its status page lists them)."""
        if not isinstance(counters, dict):
            return
        metrics = counters.pop("metrics", None)
        if self.counts is not None and metrics is not None:
            self.counts.reported(slot, generation, metrics)
        link = self.links.get(slot)
        if link is not None:
            link.send_workers()
        if self.stats is None:
            return
        ended = self._ended_status.get(slot)
        self.stats.elsewhere[str(slot + 1)] = summed([ended, counters]) if ended else counters
        everyone = dict(self.stats.elsewhere, **{"1": self.stats.snapshot(local=True)})
        for other, transport in list(self.children.items()):
            rest = {label: c for label, c in everyone.items() if label != str(other + 1)}
            predecessors = self._ended_status.get(other)
            if predecessors:  # their totals ride in our entry, so the labels still count the members
                rest["1"] = summed([rest["1"], predecessors])
            try:
                transport.write(json.dumps(rest).encode() + b"\n")
            except Exception:  # noqa: BLE001  # a child that just died: processEnded follows
                log.debug("process {slot} gone while sending counters", slot=other + 1)

    def child_ended(self, child: _Child, reason: Failure) -> None:
        """A child exited: replace it unless the group is stopping."""
        self.children.pop(child.slot, None)
        self.protocols.pop(child.slot, None)
        self.links.pop(child.slot, None)
        if self.stats is not None:  # its totals stay in the sums (so they never go back); its gauges leave
            last = self.stats.elsewhere.get(str(child.slot + 1))
            if last is not None:
                ended = self._ended_status[child.slot] = ended_status(last)
                self.stats.elsewhere[str(child.slot + 1)] = ended
        if self.counts is not None:
            self.counts.ended(child.slot, child.generation)
        if self.stopping or not self.running:
            return
        lived = self.reactor.seconds() - child.started
        self.delay = RESPAWN_DELAY if lived > 10 else min(self.delay * 2, MAX_RESPAWN_DELAY)
        log.warn(  # noqa: G010  # twisted.logger.Logger has no .warning
            "process {slot} exited ({why}); replacing it in {delay:.1f} s",
            slot=child.slot + 1, why=reason.getErrorMessage(), delay=self.delay,
        )
        self.reactor.callLater(self.delay, self._respawn, child.slot)

    def _respawn(self, slot: int) -> None:
        if not self.stopping and self.running and slot not in self.children:
            self._spawn(slot)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every child (SIGHUP: reload the config)."""
        for transport in list(self.children.values()):
            try:
                transport.signalProcess(signum)
            except ProcessExitedAlready:
                log.debug("process {pid} already exited", pid=transport.pid)

    def stop_children(self, grace: float) -> Any:
        """SIGTERM every child (each drains for up to ``grace`` s), SIGKILL 5 s after that.

        Returns a Deferred fired once every child has exited (None: there are none).
        """
        self.stopping = True
        waiting = [p.ended for p in self.protocols.values()]
        if not waiting:
            return None
        if self._stopped is None:
            self.signal_all(signal.SIGTERM)
            timer = self.reactor.callLater(grace + STOP_GRACE, self.signal_all, signal.SIGKILL)

            def done(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            self._stopped = DeferredList(waiting).addBoth(done)
        return self._stopped

    def stopService(self) -> Any:
        """Stop the children (if the daemon did not already): SIGTERM, then SIGKILL."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.stop_children(0.0)
