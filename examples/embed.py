"""Embedding portmux: a web site and SSH (and TLS passthrough) on one port.

Run:  python examples/embed.py [PORT]   (default 8081, loopback only)
Then: curl http://127.0.0.1:8081/    and    ssh -p 8081 127.0.0.1 (proxied to port 22)
"""

import sys

from twisted.internet import reactor
from twisted.web.static import Data

from portmux import Multiplexer, ProxyTarget

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
my_root = Data(b"hello from the shared port\n", "text/plain")

mux = Multiplexer(reactor)
mux.add_route(my_root, protocol="http")
mux.listen(f"tcp:{port}:interface=127.0.0.1")

# Optional: more services on the same port, one line each.
mux.add_route(ProxyTarget("tcp:127.0.0.1:22"), protocol="ssh")
mux.add_route(ProxyTarget("tcp:127.0.0.1:8443"), protocol="tls")

if __name__ == "__main__":
    reactor.run()
