# -*- test-case-name: tests.protocols.test_registry -*-
"""Drop-in plugin modules for portmux (probes, targets), found with twisted.plugin.

A module here exposes objects that provide both ``twisted.plugin.IPlugin`` and a
portmux interface, e.g. ``PROBE = portmux.protocols.PluginProbe("name", function)``.
Other distributions may ship modules into their own ``portmux/plugins`` directory
(without an ``__init__.py``); the idiom below adds those directories.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
