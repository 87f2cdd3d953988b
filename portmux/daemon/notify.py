# -*- test-case-name: tests.daemon.test_notify -*-
"""systemd's readiness protocol (``Type=notify``): one datagram to ``$NOTIFY_SOCKET``.

Written out rather than depending on libsystemd: the protocol is a newline-separated
``KEY=VALUE`` datagram to a UNIX socket (an abstract one when the path starts with ``@``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["sd_notify"]


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; False when none is listening."""
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as skt:
            skt.connect(address)
            skt.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True
