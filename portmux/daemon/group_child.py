# -*- test-case-name: tests.daemon.test_group -*-
"""A process group's child: serves the parent's inherited listening sockets with the same config.

Started by portmux.daemon.group as ``python -m portmux.daemon.group_child``; no
control socket: the parent's registered routes arrive over ``--channel``
(portmux.daemon.group_channel), and connections routed to them go back up it.
Its own counters go to the parent on stdout every second; the other processes'
counters come back on stdin, so its status page shows the group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger(namespace="portmux")

REPORT_EVERY = 1.0
"""Seconds between a child's counter reports (the status page is this fresh)."""


def _watch_parent(reactor: Any, parent: int) -> None:
    """Stop when the parent is gone (we were re-parented), so no orphan keeps serving."""
    from twisted.internet.task import LoopingCall

    def check() -> None:
        if os.getppid() != parent:
            log.info("parent {pid} is gone; stopping", pid=parent)
            reactor.stop()

    LoopingCall(check).start(1.0, now=False)


class _Counters(LineOnlyReceiver):
    """The child's stdin: the parent's JSON lines with the other processes' counters."""

    MAX_LENGTH = 1 << 22
    delimiter = b"\n"

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def lineReceived(self, line: bytes) -> None:
        try:
            self.stats.elsewhere = json.loads(line)
        except ValueError:
            log.warn("unreadable counters from the parent")  # noqa: G010


def _exchange_counters(reactor: Any, mux: Any) -> None:
    """Report our own counters on stdout every second (the status page's, and /metrics' numbered
    for portmux.daemon.group_metrics); read the others' from stdin."""
    from twisted.internet import stdio
    from twisted.internet.task import LoopingCall

    from portmux.daemon.group_metrics import OwnCounts

    stats = mux.stats
    own = mux.shared("own-metric-counts", OwnCounts)
    stdio.StandardIO(_Counters(stats), reactor=reactor)

    def report() -> None:
        line = dict(stats.snapshot(local=True), metrics=own.take())
        os.write(1, json.dumps(line).encode() + b"\n")

    LoopingCall(report).start(REPORT_EVERY, now=True)


def _link_parent(reactor: Any, fd: int, mux: Any) -> None:
    """Serve the channel to the parent: its registered routes, our connections to them."""
    import socket

    from twisted.internet.protocol import Factory

    from portmux.daemon.group_channel import ParentLink, read_routes

    link = ParentLink(mux)
    read_routes(link, fd)
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, Factory.forProtocol(lambda: link))
    os.close(fd)  # the reactor has its own copy


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the inherited listening sockets with the same config until SIGTERM."""
    parser = argparse.ArgumentParser(description="a portmux child process (started by the parent)")
    parser.add_argument("--config")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--socket", action="append", default=[], help="FD:FAMILY")
    parser.add_argument("--channel", type=int, help="FD of the UNIX socket to the parent")
    parser.add_argument("--plain", action="store_true", help="the parent's listeners came from --listen")
    args = parser.parse_args(argv)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from portmux.daemon import config
    from portmux.daemon.service import PortmuxService

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    path = args.config

    def load() -> Any:
        return config.default_config(reactor) if path is None else config.load_config(path, reactor)

    adopted = []
    for text in args.socket:
        fd, _, family = text.partition(":")
        adopted.append(AdoptedStreamServerEndpoint(reactor, int(fd), int(family)))
    listen = [f"inherited:{n}" for n in range(len(adopted))] if args.plain else None
    service = PortmuxService(reactor, load, listen=listen, adopt=adopted)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    _watch_parent(reactor, args.parent)
    if args.channel is not None:
        _link_parent(reactor, args.channel, service.mux)
    _exchange_counters(reactor, service.mux)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
