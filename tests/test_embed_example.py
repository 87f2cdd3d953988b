"""examples/embed.py, the README's embedding program, serves curl on the port it is given."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port, stop_process, wait_listening

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_embed_example_serves_http() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, str(ROOT / "examples" / "embed.py"), str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, process)
        out = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/"],
                             check=True, capture_output=True).stdout
    finally:
        stop_process(process)
    assert out == b"hello from the shared port\n"
    assert b"Warning" not in process.stderr.read()  # type: ignore[union-attr]
