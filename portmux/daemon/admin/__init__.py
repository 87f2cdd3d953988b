# -*- test-case-name: tests.daemon.test_daemon -*-
"""The built-in status page, usable as a route target (``status = true`` in config)."""

from __future__ import annotations

from typing import cast

from twisted.web.resource import IResource

from portmux.daemon.admin.status import Metrics, StatusJSON, StatusPage, status_snapshot
from portmux.targets.resource import ResourceTarget

__all__ = ["Metrics", "StatusJSON", "StatusPage", "status_snapshot", "status_target"]


def status_target() -> ResourceTarget:
    """A resource target serving the status page of the multiplexer it is routed on."""
    target = ResourceTarget(cast(IResource, StatusPage()))
    target.description = "built-in status page"
    return target
