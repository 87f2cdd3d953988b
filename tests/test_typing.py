"""The package type-checks under mypy --strict with the mypy-zope plugin (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_mypy_with_zope_plugin_is_clean(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    pytest.importorskip("mypy_zope")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "portmux"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:]
