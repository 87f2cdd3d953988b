"""A portmux process for benchmarks: one listener, HTTP proxied to one backend.

    python bench/portmux_proxy.py --listen 127.0.0.1:PORT --http 127.0.0.1:BACKEND

Runs a Multiplexer with the built-in probes and a proxy route for protocol
``http`` (``--default`` adds a catch-all proxy route) on the epoll reactor.
Usable by ../shared/peer-bench's ``--custom``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, install the epoll reactor, and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--http", required=True, help="HOST:PORT of the HTTP backend")
    parser.add_argument("--default", help="HOST:PORT for connections that match nothing")
    parser.add_argument("--proxy-header", choices=("v1", "v2"), help="send a PROXY header")
    parser.add_argument("--quiet", action="store_true", help="no log output")
    parser.add_argument("--access-log", help="write the access log to this file (- for stdout)")
    parser.add_argument("--access-log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from portmux.core.mux import Multiplexer
    from portmux.targets.proxy import ProxyTarget

    if not args.quiet:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])  # type: ignore[list-item]
    mux = Multiplexer(reactor)
    host, port = _host_port(args.http)
    mux.add_route(
        ProxyTarget(reactor, [f"tcp:{host}:{port}"], proxy_header=args.proxy_header), name="http",
        protocol="http",
    )
    if args.default:
        host, port = _host_port(args.default)
        mux.add_route(ProxyTarget(reactor, [f"tcp:{host}:{port}"]), name="default", default=True)
    if args.access_log:
        from portmux.daemon.accesslog import AccessLog

        access_log = AccessLog(reactor, args.access_log, args.access_log_format)
        access_log.start()
        mux.stats.observers.append(access_log)
    host, port = _host_port(args.listen)
    reactor.listenTCP(port, mux, backlog=4096, interface=host)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
