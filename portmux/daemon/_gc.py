# -*- test-case-name: tests.daemon.test_gc -*-
"""Keep the cycle collector's full passes off the objects built at startup.

Only startup is frozen, never later: registered routes are kept cheap for the
collector instead (~6 tracked objects each, docs/workers.md "Registration at
scale"), because freezing them is not safe.  A frozen object is never examined
again, so frozen cyclic garbage is never freed: an unregistered group (its route
and target refer back to it) or a closed connection (protocol <-> transport)
frozen while alive would leak for the life of the process, once per freeze.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then move every live object into the permanent generation.

    Startup (Twisted, the config, the probes) leaves ~100k objects that a full
    collection would walk again and again: measured as a ~30 ms pause.  The data
    path frees its objects by reference counting, so after this the collector
    has almost nothing to look at.  Once per process (a service restarted in the
    same process, as tests do, does not collect again).  Returns how many objects
    are frozen.
    """
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
    return gc.get_freeze_count()
