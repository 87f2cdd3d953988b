"""A portmux process for benchmarks: one listener, HTTP proxied to one backend.

    python bench/portmux_proxy.py --listen 127.0.0.1:PORT --http 127.0.0.1:BACKEND

Runs a Multiplexer with the built-in probes and a proxy route for protocol
``http`` (``--default`` adds a catch-all proxy route) on the epoll reactor.
Usable by ../shared/peer-bench's ``--custom``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parent.parent)
if not os.environ.get("PORTMUX_BENCH_KEEP_PATH"):  # bench/compare.py: PYTHONPATH names the tree
    sys.path.insert(0, ROOT)  # this tree's portmux, whatever the venv has installed


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
    parser.add_argument("--no-splice", action="store_true", help="copy every byte in Python")
    parser.add_argument("--no-relay", action="store_true",
                        help="copy through Twisted transports, not the relay (targets/_relay.py)")
    parser.add_argument("--processes", type=int, default=1,
                        help="N > 1: run the daemon (twistd portmux) with processes = N instead")
    parser.add_argument("--access-log", help="write the access log to this file (- for stdout)")
    parser.add_argument("--access-log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    if args.processes > 1:
        return _daemon(args)

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
    target = ProxyTarget(reactor, [f"tcp:{host}:{port}"], proxy_header=args.proxy_header)
    if args.no_splice:
        target.splice_after = None
    if args.no_relay:
        target.relay = False
    mux.add_route(target, name="http", protocol="http")
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
    from portmux.daemon._gc import freeze_startup_objects

    reactor.callWhenRunning(freeze_startup_objects)
    try:
        from portmux._twisted import lean_dispatch
    except ImportError:  # an older tree (bench/compare.py)
        pass
    else:
        if not os.environ.get("PORTMUX_BENCH_FULL_DISPATCH"):
            lean_dispatch(reactor)
    reactor.run()
    return 0


def _daemon(args: argparse.Namespace) -> int:
    """Write the same setup as a config file and exec ``twistd -n portmux`` with processes = N."""
    import tempfile

    listen_host, listen_port = _host_port(args.listen)
    host, port = _host_port(args.http)
    lines = [
        f"processes = {args.processes}",
        "[[listen]]",
        f'endpoint = "tcp:{listen_port}:interface={listen_host}:backlog=4096"',
        "[[route]]",
        'name = "http"',
        'match = { protocol = "http" }',
        # Byte for byte, as the single-process Multiplexer above (the daemon's HTTP
        # routes default to per-request proxying, which bulk and /echo are not).
        f'proxy = {{ endpoints = ["tcp:{host}:{port}"], per_request = false }}',
    ]
    if args.default:
        host, port = _host_port(args.default)
        lines += ["[[route]]", 'name = "default"', "match = { default = true }",
                  f'proxy = ["tcp:{host}:{port}"]']
    if args.proxy_header:
        raise SystemExit("--proxy-header is not supported with --processes")
    fd, path = tempfile.mkstemp(prefix="portmux-bench-", suffix=".toml")
    os.write(fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)
    twistd = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
    if args.quiet:
        twistd += ["-l", os.devnull]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    os.execv(sys.executable, [sys.executable, *twistd, "portmux", "--config", path])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
