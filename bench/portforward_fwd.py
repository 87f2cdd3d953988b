"""The naive baseline: Twisted's own twisted.protocols.portforward on epoll.

    python bench/portforward_fwd.py --listen 127.0.0.1:PORT --to 127.0.0.1:BACKEND
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Forward every connection to the backend until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--to", required=True)
    args = parser.parse_args(argv)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    from twisted.protocols.portforward import ProxyFactory

    host, _, port = args.to.rpartition(":")
    lhost, _, lport = args.listen.rpartition(":")
    reactor.listenTCP(int(lport), ProxyFactory(host, int(port)), backlog=4096, interface=lhost)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
