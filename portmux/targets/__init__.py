# -*- test-case-name: tests.core.test_add_route -*-
"""Targets take classified connections: resource, factory, proxy, handoff, tls.

Importing this package registers the adapters that let ``Multiplexer.add_route``
take a bare IResource (→ ResourceTarget) or IProtocolFactory (→ FactoryTarget).
"""

from twisted.internet.interfaces import IProtocolFactory
from twisted.python.components import registerAdapter
from twisted.web.resource import IResource

from portmux.core.interfaces import ITarget
from portmux.targets.factory import FactoryTarget
from portmux.targets.resource import ResourceTarget

registerAdapter(ResourceTarget, IResource, ITarget)
registerAdapter(FactoryTarget, IProtocolFactory, ITarget)
