"""twistd plugin: ``twistd portmux`` (kept import-light for plugin discovery)."""

from twisted.application.service import ServiceMaker

portmux = ServiceMaker(
    "portmux",
    "portmux.daemon.tap",
    "One TCP port, every service: a protocol-sniffing port multiplexer.",
    "portmux",
)
