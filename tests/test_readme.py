"""The README's two commands are what CI runs, and they work on Debian's own Python.

Debian's python3 refuses ``pip install`` outside a virtualenv
(externally-managed-environment), so both commands make and use ``.venv``; `.ci/run`
runs the test command verbatim. The nc examples use ``-N`` (netcat-openbsd otherwise
never exits).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def readme_commands() -> list[str]:
    """The commands of the README's "The two commands" block, comments removed."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## The two commands\n\n```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README.md has no 'The two commands' sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_two_commands_make_and_use_a_venv() -> None:
    run, test = readme_commands()
    assert run == VENV + "pip install -e . && twistd -n portmux"
    assert test == VENV + "pip install -e '.[test]' && python -m pytest"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines


def test_ci_installs_python3_venv_for_the_commands() -> None:
    assert "python3-venv" in (ROOT / ".ci" / "run").read_text()


def test_nc_examples_half_close() -> None:
    text = (ROOT / "README.md").read_text()
    uses = re.findall(r"\|\s*nc\b[^`]*", text)
    assert uses, "the README shows nc"
    assert all(" -N " in use for use in uses), uses


def test_venv_is_not_committable() -> None:
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_portmux_version() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "portmux", "--version"], capture_output=True,
                          check=False, timeout=60)
    assert done.returncode == 0
    assert re.fullmatch(rb"portmux \S+\n", done.stdout), done.stdout


def test_generated_example_keys_are_not_committable() -> None:
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    probe = "examples/tls-certs/server.key"
    done = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT, check=False,
                          capture_output=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, f"{probe} is not ignored by .gitignore"
