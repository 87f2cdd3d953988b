# -*- test-case-name: tests.worker.test_library -*-
"""The worker side: register routes with a portmux daemon and receive its connections.

``Worker`` connects to the control socket, registers addresses and adopts handed-off
sockets (or is proxied to); ``portmux.worker.tap`` is the ``twistd portmux-worker``
plugin built on it.
"""

from portmux.worker._http import prefix_match, serve_site
from portmux.worker._library import (
    ControlError,
    Handoff,
    Worker,
    WorkerProtocol,
    adopt,
    control_path,
    parse_address_text,
)

__all__ = [
    "ControlError",
    "Handoff",
    "Worker",
    "WorkerProtocol",
    "adopt",
    "control_path",
    "parse_address_text",
    "prefix_match",
    "serve_site",
]
