# -*- test-case-name: tests.core.test_mux -*-
"""A probe made from a pure function of bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zope.interface import implementer

from portmux.core.interfaces import IProbe
from portmux.core.preamble import ProbeResult


@implementer(IProbe)
@dataclass(frozen=True)
class FunctionProbe:
    """An IProbe whose verdict is ``function(data)``."""

    name: str
    function: Callable[[bytes], ProbeResult]

    def __post_init__(self) -> None:
        # The function itself answers ``probe(data)``: no wrapper frame per call on
        # the per-connection path (an instance attribute shadows the method below).
        object.__setattr__(self, "probe", self.function)

    def probe(self, data: bytes) -> ProbeResult:
        return self.function(data)
