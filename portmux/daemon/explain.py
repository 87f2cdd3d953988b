# -*- test-case-name: tests.daemon.test_explain -*-
"""``portmux explain CONFIG --hex BYTES``: why a connection's first bytes get the route they get.

Loads the config (its routes, built as the server builds them), runs every probe on
the bytes, and prints the trace of portmux.core.trace: each probe's verdict in order,
the preamble, every route with why it did or did not match, and the chosen target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_ROUTED = 0
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``portmux explain``."""
    parser.add_argument("config", metavar="CONFIG", help="the TOML config whose routes decide")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hex", metavar="BYTES", help="the connection's first bytes in hex (spaces allowed)")
    source.add_argument("--capture", metavar="FILE", type=Path, help="a file holding the first bytes (e.g. tests/fixtures/…)")
    parser.add_argument(
        "--from", dest="peer", metavar="IP", default="127.0.0.1",
        help="the client's address, for network matches (default 127.0.0.1)",
    )


def read_bytes(args: argparse.Namespace) -> bytes:
    """The bytes to explain; ValueError or OSError with a readable message."""
    if args.capture is not None:
        return Path(args.capture).read_bytes()
    text = "".join(args.hex.split())
    return bytes.fromhex(text.removeprefix("0x"))


def run_explain(args: argparse.Namespace) -> int:
    """Print the trace; 0 when a route takes the bytes, 1 when they are refused, 2 on bad input."""
    from portmux.core.routing import Router
    from portmux.core.trace import explain
    from portmux.daemon.config import ConfigError, load_config
    from portmux.protocols import all_probes

    try:
        data = read_bytes(args)
    except (ValueError, OSError) as e:
        print(f"portmux explain: cannot read the bytes: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"portmux explain: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    trace = explain(all_probes(), Router(config.routes), data, args.peer)
    print("\n".join(trace.lines()))
    return EXIT_ROUTED if trace.chosen is not None else EXIT_REFUSED
