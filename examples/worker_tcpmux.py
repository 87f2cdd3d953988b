"""A worker process serving a TCPMUX service (RFC 1078) through portmux, by handoff or proxy.

Start portmux first (with a [control] table), then:

    python examples/worker_tcpmux.py unix:/tmp/portmux/control.sock upper [handoff|proxy]
    printf 'upper\\r\\nhello\\n' | nc -N 127.0.0.1 8080      # -> +  then HELLO

In proxy mode the worker listens on an ephemeral loopback port and portmux dials it.
"""

import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from portmux.worker._library import Worker


@implementer(IHalfCloseableProtocol)
class Upper(Protocol):
    """Answers in upper case; when the client half-closes, finish writing, then close."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


control = sys.argv[1] if len(sys.argv) > 1 else "unix:/tmp/portmux/control.sock"
service = sys.argv[2] if len(sys.argv) > 2 else "upper"
mode = sys.argv[3] if len(sys.argv) > 3 else "handoff"
factory = Factory.forProtocol(Upper)
worker = Worker(reactor, control, factory)


async def main() -> None:
    endpoint = None
    if mode == "proxy":
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        endpoint = f"tcp:127.0.0.1:{port.getHost().port}"
    await worker.connect()
    reply = await worker.register({"protocol": "tcpmux", "service": service}, mode, endpoint)
    print(f"registered {reply['route']}", flush=True)
    await worker.lost
    reactor.stop()


if __name__ == "__main__":
    Deferred.fromCoroutine(main()).addErrback(lambda f: (print(f.getErrorMessage()), reactor.stop()))
    reactor.run()
