# -*- test-case-name: tests.daemon.test_daemon -*-
"""The built-in status page, usable as a route target (``status = true`` in config)."""

from __future__ import annotations

from typing import Any, cast

from twisted.web.resource import IResource

from portmux.daemon.admin.status import Metrics, StatusJSON, StatusPage, status_snapshot
from portmux.targets.resource import ResourceTarget

__all__ = ["Metrics", "StatusJSON", "StatusPage", "from_config", "status_snapshot", "status_target"]


def status_target() -> ResourceTarget:
    """A resource target serving the status page of the multiplexer it is routed on."""
    target = ResourceTarget(cast(IResource, StatusPage()))
    target.description = "built-in status page"
    return target


def from_config(value: Any, ctx: Any) -> ResourceTarget | None:
    """Config builder for ``status = true``."""
    if value is not True:
        ctx.problem("status", "expected true")
        return None
    return status_target()
