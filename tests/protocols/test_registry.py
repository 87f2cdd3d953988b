"""Tests for builtin_probes, all_probes and drop-in plugin discovery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from portmux.core.interfaces import IProbe
from portmux.protocols import BUILTIN_ORDER, PluginProbe, all_probes, builtin_probes
from portmux.protocols.h2c import probe_h2c

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_order() -> None:
    probes = builtin_probes()
    assert [p.name for p in probes] == list(BUILTIN_ORDER)
    # The original six keep their positions ahead of everything added since.
    assert [p.name for p in probes][:6] == ["tls", "h2c", "http", "ssh", "tcpmux", "nmf"]
    assert all(IProbe.providedBy(p) for p in probes)


def test_all_probes_starts_with_builtins() -> None:
    names = [p.name for p in all_probes()]
    assert names[: len(BUILTIN_ORDER)] == list(BUILTIN_ORDER)
    assert len(names) == len(set(names))


def test_plugin_probe_provides_both_interfaces() -> None:
    from twisted.plugin import IPlugin

    probe = PluginProbe("x", probe_h2c)
    assert IPlugin.providedBy(probe) and IProbe.providedBy(probe)


def test_drop_in_plugin_found(tmp_path: Path) -> None:
    """A module in another sys.path entry's portmux/plugins is discovered."""
    plugins = tmp_path / "portmux" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "toy_probe.py").write_text(
        textwrap.dedent(
            """
            from portmux.core.preamble import NEED_MORE, NO, Preamble
            from portmux.protocols import PluginProbe

            def probe_toy(data):
                if not data:
                    return NEED_MORE
                return Preamble(protocol="toy") if data[:1] == b"*" else NO

            PROBE = PluginProbe("toy", probe_toy)
            SHADOW = PluginProbe("tls", probe_toy)  # a built-in name: ignored
            """
        )
    )
    script = textwrap.dedent(
        """
        from portmux.protocols import all_probes
        probes = all_probes()
        print(",".join(p.name for p in probes))
        print(probes[0].probe(b"*1") , probes[-1].probe(b"*1"))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path,
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0] == ",".join((*BUILTIN_ORDER, "toy"))
    assert out[1].startswith("Verdict.NO Preamble(protocol='toy'")
