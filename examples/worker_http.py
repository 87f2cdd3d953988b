"""A worker process serving an HTTP site through portmux's shared port, by socket handoff.

Start portmux first (with a [control] table), then:

    python examples/worker_http.py unix:/tmp/portmux/control.sock [HOST] [PATH]
    curl http://127.0.0.1:8080/hello

The site is a plain twisted.web Site: portmux hands each matching connection's
socket to this process, which serves it directly (portmux leaves the data path).
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from portmux.worker._library import Worker

control = sys.argv[1] if len(sys.argv) > 1 else "unix:/tmp/portmux/control.sock"
host = sys.argv[2] if len(sys.argv) > 2 else "*"
path = sys.argv[3] if len(sys.argv) > 3 else "/hello"

root = Resource()
root.putChild(path.strip("/").encode(), Data(f"hello from worker pid {os.getpid()}\n".encode(), "text/plain"))
worker = Worker(reactor, control, Site(root))


async def main() -> None:
    await worker.connect()
    reply = await worker.register({"protocol": "http", "host": host, "path": path}, mode="handoff")
    print(f"registered {reply['route']} ({reply['members']} worker(s) in the group)", flush=True)
    await worker.lost
    print("portmux closed the control connection; exiting", flush=True)
    reactor.stop()


if __name__ == "__main__":
    Deferred.fromCoroutine(main()).addErrback(lambda f: (print(f.getErrorMessage()), reactor.stop()))
    reactor.run()
