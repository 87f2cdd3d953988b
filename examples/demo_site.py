"""Demo services for examples/one-port.toml: a small web site and an upper-casing TCPMUX service.

portmux finds this module by the dotted names ``demo_site:root`` and
``demo_site:UpperFactory``: the config file's directory is searched for modules.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.static import Data


def root() -> Resource:
    """The site mounted at /demo/: an index page and /demo/hello."""
    site = Resource()
    index: Any = Data(b"<h1>portmux demo</h1><p><a href='hello'>hello</a></p>\n", "text/html")
    hello: Any = Data(b"hello from an in-process resource\n", "text/plain")
    site.putChild(b"", index)
    site.putChild(b"hello", hello)
    return site


class Upper(Protocol):
    """Answers every chunk it receives in upper case."""

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data.upper())


class UpperFactory(Factory):
    """A plain IProtocolFactory, named in the config as a class (called to make one)."""

    protocol = Upper
    noisy = False
