"""Fixtures the daemon tests share."""

from tests.daemon.group_support import started

__all__ = ["started"]
