# -*- test-case-name: tests.protocols.test_registry -*-
"""Stable home of the probe list for plugin authors and fuzzers (see portmux.protocols).

``all_probes()`` lists every probe (built-in, then drop-in plugins) as an ``IProbe``
with ``name`` and ``probe(bytes)``; ``PluginProbe`` is what a drop-in plugin module
exposes.
"""

from portmux.protocols import PluginProbe, all_probes, builtin_probes

__all__ = ["PluginProbe", "all_probes", "builtin_probes"]
