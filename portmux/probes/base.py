"""A probe made from a pure function of bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zope.interface import implementer

from portmux.interfaces import IProbe
from portmux.preamble import ProbeResult


@implementer(IProbe)
@dataclass(frozen=True)
class FunctionProbe:
    """An IProbe whose verdict is ``function(data)``."""

    name: str
    function: Callable[[bytes], ProbeResult]

    def probe(self, data: bytes) -> ProbeResult:
        return self.function(data)
