# -*- test-case-name: tests.control.test_server,tests.worker.test_integration -*-
"""``portmux routes --control unix:/path``: list a running portmux's live routes."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from portmux.control import _framing as pc
from portmux.worker._library import control_path


def add_routes_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``portmux routes``."""
    parser.add_argument("--control", required=True, metavar="unix:/PATH",
                        help="the control socket of the running portmux")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")


def query(path: str, timeout: float = 5.0) -> pc.Message:
    """Say hello, ask for the routes, return the answer; raise OSError/ValueError on failure."""
    decoder = pc.FrameDecoder()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(pc.encode({"op": "hello", "id": 1, "version": pc.VERSION})
                     + pc.encode({"op": "routes", "id": 2}))
        while True:
            data = sock.recv(65536)
            if not data:
                raise ValueError("portmux closed the control connection without answering")
            for message in decoder.feed(data):
                if message["op"] == "error":
                    raise ValueError(f"{message.get('error')}: {message.get('message')}")
                if message["op"] == "routes":
                    return message


def format_routes(answer: pc.Message) -> str:
    """A plain-text table: registered routes (with owners) first, then static ones."""
    lines = [f"portmux pid {answer.get('pid')}"]
    registered: list[Any] = answer.get("registered", [])
    lines.append(f"registered routes: {len(registered)}")
    for group in registered:
        owners = ", ".join(
            f"pid {m['pid']} uid {m['uid']}" + (f" -> {m['endpoint']}" if m.get("endpoint") else "")
            for m in group["members"]
        )
        lines.append(f"  {group['name']:<40} {owners}")
    static: list[Any] = answer.get("static", [])
    lines.append(f"static routes: {len(static)}")
    for route in static:
        match = " ".join(f"{k}={v}" for k, v in route["match"].items()) or "(any)"
        lines.append(f"  {route['name']:<20} {route['kind']:<10} {match}  [config, pid {answer.get('pid')}]")
    return "\n".join(lines)


def run_routes(args: argparse.Namespace) -> int:
    """Print the routes; 1 with a short message when portmux cannot be asked."""
    path = control_path(args.control)
    try:
        answer = query(path, args.timeout)
    except (OSError, ValueError) as e:
        print(f"portmux routes: {path}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(format_routes(answer))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portmux routes")
    add_routes_arguments(parser)
    return run_routes(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
