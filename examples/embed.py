"""Embedding portmux: one port for a web site, SSH and everything TLS.

Run:  python examples/embed.py [PORT]   (default 8081, loopback only)
Then: curl -H 'Host: www.example.com' http://127.0.0.1:8081/
"""

import sys

from twisted.internet import reactor
from twisted.web.static import Data

from portmux import Multiplexer, ProxyTarget, ResourceTarget

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
site = Data(b"hello from the shared port\n", "text/plain")

mux = Multiplexer(reactor)
mux.add_route("site", ResourceTarget(site), protocol="http", host="www.example.com")
mux.add_route("ssh", ProxyTarget(reactor, ["tcp:127.0.0.1:22"]), protocol="ssh")
mux.add_route("tls", ProxyTarget(reactor, ["tcp:127.0.0.1:8443"]), protocol="tls")
mux.listen(f"tcp:{port}:interface=127.0.0.1")

if __name__ == "__main__":
    reactor.run()
