"""A non-editable install ships the twistd plugin and no twisted/__init__.py of ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_plain_install_ships_the_plugin_and_twistd_lists_it(tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--target", str(target), str(REPO)],
        check=False, capture_output=True, timeout=300, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr.decode()[-2000:]
    plugins = target / "twisted" / "plugins"
    assert (plugins / "portmux_plugin.py").exists()
    assert not (target / "twisted" / "__init__.py").exists()
    assert not (plugins / "__init__.py").exists()
    assert (target / "portmux" / "daemon" / "default.toml").exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    listed = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        check=False, capture_output=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert b"portmux " in listed.stdout
