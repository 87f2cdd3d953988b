"""The suite's own rule: which log events count as an unhandled error."""

from __future__ import annotations

from twisted.python.failure import Failure

from tests.conftest import _is_unhandled


def _failure() -> Failure:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        return Failure()
    raise AssertionError("unreachable")


def test_reactor_unhandled_error_counts() -> None:
    event = {"log_format": "Unhandled Error", "log_failure": _failure(), "isError": 1}
    assert _is_unhandled(event)


def test_lost_deferred_error_counts() -> None:
    event = {"log_format": "Unhandled error in Deferred:", "log_failure": _failure()}
    assert _is_unhandled(event)


def test_handled_failure_log_line_does_not_count() -> None:
    event = {"log_format": "backend {name} refused", "name": "b", "log_failure": _failure()}
    assert not _is_unhandled(event)


def test_plain_info_does_not_count() -> None:
    assert not _is_unhandled({"log_format": "Unhandled words but no error"})
