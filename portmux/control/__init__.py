# -*- test-case-name: tests.control.test_framing,tests.control.test_server,tests.test_layers -*-
"""The control side: the control socket server, the worker registry and their framing.

Workers connect to the control socket (``_server``), speak length-prefixed JSON
frames (``_framing``) and register routes that live as long as their connection
(``_registry``). ``portmux.control.cli`` is the ``portmux ctl`` command.
"""

from portmux.control._framing import FrameDecoder, FrameError, decode_body, encode
from portmux.control._registry import (
    Address,
    RegistrationError,
    Registry,
    Reservation,
    parse_address,
)
from portmux.control._server import ControlFactory, ControlProtocol, ControlService

__all__ = [
    "Address",
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
    "parse_address",
]
