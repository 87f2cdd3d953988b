# -*- test-case-name: tests.control.test_framing,tests.control.test_server,tests.test_layers -*-
"""The control side: the control socket server, the worker registry and their framing.

Workers connect to the control socket (``_server``), speak length-prefixed JSON
frames (``_framing``) and register routes, named with a config route's match keys
(``_keys``), that live as long as their connection (``_registry``).
``portmux.control.cli`` is the ``portmux ctl`` command.
"""

from portmux.control._framing import FrameDecoder, FrameError, decode_body, encode
from portmux.control._keys import parse_match, registration_match, translate_address
from portmux.control._registry import RegistrationError, Registry, Reservation
from portmux.control._server import ControlFactory, ControlProtocol, ControlService

__all__ = [
    "ControlFactory",
    "ControlProtocol",
    "ControlService",
    "FrameDecoder",
    "FrameError",
    "RegistrationError",
    "Registry",
    "Reservation",
    "decode_body",
    "encode",
    "parse_match",
    "registration_match",
    "translate_address",
]
