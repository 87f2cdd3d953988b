"""Freezing the startup objects: a full collection no longer walks them."""

from __future__ import annotations

import gc

from portmux.daemon._gc import freeze_startup_objects


def test_freeze_moves_live_objects_out_of_collection() -> None:
    gc.unfreeze()
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000
        assert sum(gc.get_count()) < 1000  # the generations start (nearly) empty
        assert freeze_startup_objects() == frozen  # once per process
    finally:
        gc.unfreeze()
