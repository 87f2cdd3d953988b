# -*- test-case-name: tests.worker.test_http_prefixes -*-
"""Serve a twisted.web Site for HTTP.SYS-style URL prefixes, in three lines.

    from portmux.worker import serve_site
    serve_site(reactor, "/run/portmux/control", ["http://+:8080/app/"], Site(root))
    reactor.run()

The Site listens on a unix socket of its own (the worker's request queue);
portmux forwards each request under the prefixes to it over pooled keep-alive
connections. The prefixes vanish when the worker's control connection ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXServerEndpoint

from portmux.worker._library import Worker


def prefix_match(prefix: str) -> dict[str, str]:
    """The registration keys for ``http://+:PORT/path/`` (or ``*``, or a host; ``https://`` too)."""
    return {"protocol": "http", "via": prefix}


@inlineCallbacks
def serve_site(reactor: Any, control: str, prefixes: Sequence[str] | str, site: Any,
               queue: str | None = None) -> Any:
    """Listen on a unix socket (``queue``, or a fresh one), register ``prefixes`` for it.

    Fires with the connected ``Worker`` once every prefix is registered; fails with
    the refusal (ControlError) if portmux refuses one (reserved, conflicting).
    """
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if queue is None:
        queue = os.path.join(tempfile.mkdtemp(prefix="portmux-queue-"), "http.sock")
    port = yield UNIXServerEndpoint(reactor, queue, mode=0o600).listen(site)
    worker = Worker(reactor, control, site)
    worker.queue_port = port  # type: ignore[attr-defined]  # kept listening while the worker lives
    yield worker.connect()
    for prefix in prefixes:
        yield worker.register(prefix_match(prefix), mode="proxy", endpoint=f"unix:{queue}")
    return worker


__all__ = ["prefix_match", "serve_site"]
