"""The daemon with ``[registry]``: routes stored in etcd sit after the file's and survive a reload."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet import reactor

from portmux.control._cluster import registry_health
from portmux.daemon.config import load_config
from portmux.daemon.service import PortmuxService
from tests.cluster.harness import free_port

CONFIG = """
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
[registry]
etcd = ["http://127.0.0.1:{port}"]
node = "n1"
[[route]]
name = "{first}"
match = {{ protocol = "tcpmux", service = "first" }}
echo = true
[[route]]
name = "rest"
match = {{ default = true }}
echo = true
"""


def test_stored_routes_follow_the_file_routes_and_survive_a_reload(tmp_path: Path) -> None:
    config_file = tmp_path / "portmux.toml"
    port = free_port()  # nothing listens: the registry stays stale, which changes nothing here
    config_file.write_text(CONFIG.format(port=port, first="first"))
    service = PortmuxService(reactor, lambda: load_config(config_file, reactor))
    assert service.cluster is not None
    health = registry_health(service.mux)
    assert health is not None and health.stale and health.node == "n1"

    read = service._stored_routes.reader(reactor, "/portmux/")
    stored = read("ssh", json.dumps({"match": {"protocol": "ssh"}, "proxy": ["tcp:127.0.0.1:22"]}).encode())
    service._stored_routes.set_stored([stored])
    assert [r.name for r in service.mux.static_routes] == ["first", "rest", "ssh"]
    # The Router still tries `default` last, so the stored route comes before it.
    assert [r.name for r in service.mux.router.default_routes] == ["rest"]

    config_file.write_text(CONFIG.format(port=port, first="renamed"))
    assert service.reload()
    assert [r.name for r in service.mux.static_routes] == ["renamed", "rest", "ssh"]

    # A stored route may not reuse a file route's name.
    try:
        read("rest", b'{"match": {"protocol": "ssh"}, "echo": true}')
    except ValueError as error:
        assert "duplicate route name 'rest' (first used by the config file)" in str(error)
    else:
        raise AssertionError("a stored route took a file route's name")
