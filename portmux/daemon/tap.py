# -*- test-case-name: tests.daemon.test_daemon -*-
"""``twistd portmux``: command-line options and the service maker."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage


class Options(usage.Options):
    """Options for ``twistd portmux``; with none, the embedded default config runs."""

    synopsis = "[--config FILE] [--listen ENDPOINT]... [--control unix:PATH]"
    longdesc = (
        "Share one TCP port between many services. Each connection's first bytes "
        "are sniffed (TLS ClientHello, HTTP, HTTP/2, SSH, TCPMUX, net.tcp ...) and "
        "routed to an in-process resource or factory, a proxied backend, or a "
        "worker process. Without --config the embedded default runs: 127.0.0.1:8080 "
        "with the status page (HTTP) and TCPMUX echo and HELP."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "TOML config file (see docs/config.md). Default: embedded default."],
        ["control", None, None,
         ("Control socket endpoint for worker processes, e.g. unix:/run/portmux/control.sock "
          "(overrides [control].endpoint).")],
        ["processes", "p", None,
         "Processes serving the listeners (overrides the config's processes; default 1).", int],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this Twisted server endpoint string instead of the config's
        listeners (repeatable), e.g. tcp:443:interface=127.0.0.1."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        """Check --listen strings and load the config once now; a bad one stops twistd
        with status 1.

        SystemExit, not UsageError: twistd before 26.10 printed a UsageError and
        exited 0, so a broken config looked like a clean stop.
        """
        from twisted.internet import reactor

        from portmux.daemon.config import ConfigError
        from portmux.daemon.endpoints import EndpointStringError, parse_server_endpoint

        if self["processes"] is not None and self["processes"] < 1:
            raise SystemExit(f"portmux: --processes must be at least 1, not {self['processes']}")
        for endpoint in self["listen"]:
            try:
                parse_server_endpoint(reactor, endpoint)
            except EndpointStringError as error:
                raise SystemExit(f"portmux: --listen {endpoint!r}: {error}") from None
        try:
            self.loader()()
        except ConfigError as error:
            raise SystemExit(f"twistd portmux: invalid config, not starting:\n{error}") from None
        except OSError as error:
            raise SystemExit(f"twistd portmux: cannot read config: {error}") from None

    def loader(self) -> Any:
        """A function that loads the chosen config afresh (used again on SIGHUP)."""
        from twisted.internet import reactor

        from portmux.daemon import config

        path = self["config"]
        if path is None:
            return lambda: config.default_config(reactor)
        return lambda: config.load_config(path, reactor)


def makeService(options: Options) -> Any:
    """Build the portmux service from parsed options."""
    from twisted.internet import reactor

    from portmux.daemon.service import PortmuxService

    return PortmuxService(
        reactor, options.loader(), listen=options["listen"], control=options["control"],
        processes=options["processes"], config_path=options["config"],
        run_as=run_as(options),
    )


def run_as(options: Options) -> tuple[int | None, int | None]:
    """The ``twistd --uid/--gid`` the daemon will switch to after binding (None: no switch)."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return None, None
    return parent.get("uid"), parent.get("gid")
