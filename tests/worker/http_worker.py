"""A worker process serving a twisted.web Site for URL prefixes (run as a script).

``python http_worker.py CONTROL NAME PREFIX...``: prints ``registered`` (or the
refusal) on stdout. ``GET .../slow`` is never answered and ``GET .../leave``
closes the control connection (the queue stays open), so a test can end the
registration while a request is in flight; a POST's answer ends with its body.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from portmux.worker import serve_site

WORKER: list[Any] = []


class Named(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        if request.path.endswith(b"/slow"):
            return NOT_DONE_YET
        if request.path.endswith(b"/leave"):
            reactor.callLater(0.2, WORKER[0].close)
        return f"{sys.argv[2]} pid={os.getpid()} {request.path.decode()}\n".encode()

    def render_POST(self, request: Any) -> bytes:
        """The GET line with the body the worker received."""
        body = request.content.read().decode("latin-1")
        return f"{sys.argv[2]} pid={os.getpid()} {request.path.decode()} body={body}\n".encode()


def registered(worker: Any) -> None:
    WORKER.append(worker)
    print("registered", flush=True)


def refused(failure: Any) -> None:
    print(f"refused {failure.getErrorMessage()}", flush=True)
    reactor.stop()


serve_site(reactor, sys.argv[1], sys.argv[3:], Site(Named())).addCallbacks(registered, refused)
reactor.run()
