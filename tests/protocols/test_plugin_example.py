"""examples/probe-plugin: pip-installed into a --target directory, found by all_probes()."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from portmux.protocols import BUILTIN_ORDER

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "probe-plugin"

CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from portmux.core.preamble import NO, Preamble
    from portmux.probes import all_probes

    probes = all_probes()
    print(",".join(p.name for p in probes))
    toy = probes[-1]
    print(toy.probe(b"\\x7fTOY\\x01\\x04Demo").service, toy.probe(b"\\x7fTO") is not NO)
    fixtures = sorted(Path(sys.argv[1]).glob("*/*.bin"))
    assert fixtures and all(toy.probe(f.read_bytes()) is NO for f in fixtures)
    # ... and no built-in probe claims the toy protocol's bytes.
    print(sum(isinstance(p.probe(b"\\x7fTOY\\x01\\x04demo"), Preamble) for p in probes[:-1]))
    """
)


def _can_build() -> str | None:
    """Why a local setuptools build cannot run offline here, or None."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return "setuptools < 70.1 needs the wheel package to build"
    return None


def test_example_installs_and_is_found(tmp_path: Path) -> None:
    reason = _can_build()
    if reason is not None:
        pytest.skip(reason)
    source = tmp_path / "source"
    shutil.copytree(EXAMPLE, source)  # building writes build/ and *.egg-info next to it
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    module = target / "portmux" / "plugins" / "toy_probe.py"
    assert module.exists()
    assert not (target / "portmux" / "__init__.py").exists()
    assert not (target / "portmux" / "plugins" / "__init__.py").exists()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(target)]))
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(ROOT / "tests" / "fixtures")], env=env,
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    assert out == [",".join((*BUILTIN_ORDER, "toy")), "demo True", "0"]


def test_without_the_plugin_there_is_no_toy() -> None:
    from portmux.probes import all_probes

    assert "toy" not in [p.name for p in all_probes()]
