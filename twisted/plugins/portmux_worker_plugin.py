"""twistd plugin: ``twistd portmux-worker`` (kept import-light for plugin discovery)."""

from twisted.application.service import ServiceMaker

portmux_worker = ServiceMaker(
    "portmux-worker",
    "portmux.worker.tap",
    "Run a factory (or another twistd plugin's server) as a portmux worker.",
    "portmux-worker",
)
