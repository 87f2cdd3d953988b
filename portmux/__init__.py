# -*- test-case-name: tests.test_packaging,tests.core.test_mux -*-
"""portmux: one TCP port, every service.

The public API, re-exported; see README.md for the three-line embedding.
"""

from portmux.core.interfaces import IProbe, ITarget, as_target
from portmux.core.mux import Classified, Multiplexer, SniffSettings
from portmux.core.preamble import NEED_MORE, NO, Preamble, Verdict
from portmux.core.routing import Match, Route, Router
from portmux.targets.factory import FactoryTarget
from portmux.targets.proxy import ProxyTarget
from portmux.targets.resource import ResourceTarget

__all__ = [
    "NEED_MORE",
    "NO",
    "Classified",
    "FactoryTarget",
    "IProbe",
    "ITarget",
    "Match",
    "Multiplexer",
    "Preamble",
    "ProxyTarget",
    "ResourceTarget",
    "Route",
    "Router",
    "SniffSettings",
    "Verdict",
    "as_target",
]
