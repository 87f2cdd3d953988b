"""``[registry]``: declared like every other table, every problem reported at its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor

from portmux.daemon.config import ConfigError, RegistryConfig, parse_config

LISTEN = '[[listen]]\nendpoint = "tcp:0"\n'


def registry_problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(LISTEN + text, "cluster.toml", reactor)
    return [str(problem) for problem in caught.value.errors]


def test_registry_table_defaults() -> None:
    config = parse_config(LISTEN + '[registry]\netcd = ["http://127.0.0.1:2379/"]\n', "c.toml", reactor)
    assert config.registry == RegistryConfig(etcd=("http://127.0.0.1:2379",))
    assert config.registry.prefix == "/portmux/" and config.registry.lease_ttl == 10
    assert parse_config(LISTEN, "c.toml", reactor).registry is None


def test_every_registry_problem_is_reported_at_its_key() -> None:
    problems = registry_problems(
        '[registry]\netcd = ["127.0.0.1:2379", "http://127.0.0.1:2379"]\nprefix = "portmux"\n'
        'lease_ttl = 1\ncert = "missing.pem"\nuser = "root"\ncolour = "blue"\n')
    assert problems == [
        "cluster.toml:4: registry.etcd[0]: '127.0.0.1:2379' is not an etcd client URL like http://127.0.0.1:2379",
        "cluster.toml:5: registry.prefix: 'portmux' must start and end with '/', e.g. \"/portmux/\"",
        "cluster.toml:6: registry.lease_ttl: must be at least 2 seconds (etcd's minimum lease)",
        f"cluster.toml:7: registry.cert: cannot read {Path.cwd() / 'missing.pem'}: No such file or directory",
        ("cluster.toml:9: registry.colour: unknown key; expected one of: etcd, prefix, node, lease_ttl, timeout, "
         "ca, cert, key, user, password"),
    ]


def test_cert_needs_key_and_user_needs_password(tmp_path: Path) -> None:
    problems = registry_problems('[registry]\netcd = ["https://127.0.0.1:2379"]\nuser = "root"\n')
    assert problems == ["cluster.toml:3: registry.password: missing: a user needs its password"]
    cert = tmp_path / "client.pem"
    cert.write_text("not checked until it is loaded\n")
    problems = registry_problems(f'[registry]\netcd = ["https://127.0.0.1:2379"]\ncert = "{cert}"\n')
    assert problems == ["cluster.toml:5: registry.cert: cert and key go together"]
    assert registry_problems("[registry]\nprefix = \"/p/\"\n") == [
        'cluster.toml:3: registry.etcd: missing: etcd = ["http://127.0.0.1:2379"]']
