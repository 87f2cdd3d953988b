"""Tests for the ``portmux`` command: ``check`` output and exit codes, lazy subcommands."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import pytest

from portmux import cli

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

GOOD = """\
[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"

[[route]]
name = "echo"
match = { protocol = "tcpmux", service = "echo" }
echo = true

[[route]]
name = "app"
match = { protocol = "http", path = "/app/" }
proxy = ["tcp:127.0.0.1:9"]
"""

BAD = """\
[[listen]]
endpoint = "tcpx:0"

[[route]]
name = "echo"
match = { protocol = "tcpmux", service = 42 }
echo = true
"""


def run_module(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "portmux", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


def test_check_ok_prints_summary_and_warnings(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(good)]) == 0
    out, err = capsys.readouterr()
    summary, choice = out.splitlines()
    assert summary == f"{good}: ok (1 listener, 2 routes)"
    assert choice.startswith("  route 'app': proxy HTTP per request: each request is matched on Host and path")
    assert err == ""  # a per-request proxy route with a path is not the per-connection trap


def test_check_quiet(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "-q", str(good)]) == 0
    assert capsys.readouterr() == ("", "")


def test_check_errors_one_per_line_exit_1(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        (
            f"{bad}:2: listen[0].endpoint: cannot parse server endpoint 'tcpx:0': "
            "ValueError: Unknown endpoint type: 'tcpx'"
        ),
        f"{bad}:6: route[0].match.service: expected a string, got 42",
    ]


def test_check_several_files_any_bad_is_1(good: Path, bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{good}: ok (1 listener, 2 routes)"
    assert f"{bad}:6: route[0].match.service" in err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert cli.main(["check", str(missing)]) == 1
    assert capsys.readouterr().err == f"{missing}: cannot read the file: No such file or directory\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "check" in capsys.readouterr().err


def test_unavailable_subcommand(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(
        cli.EXTERNAL_COMMANDS, "routes", ("portmux.no_such_cli", "add", "run", "list routes")
    )
    assert cli.main(["routes", "--anything", "x"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "portmux routes: not available: "
        "ModuleNotFoundError: No module named 'portmux.no_such_cli'\n"
    )


def test_external_subcommand_is_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("portmux_fake_cli")
    seen: list[argparse.Namespace] = []

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target")

    def run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    module.add_it = add  # type: ignore[attr-defined]
    module.run_it = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "portmux_fake_cli", module)
    monkeypatch.setitem(
        cli.EXTERNAL_COMMANDS, "connect", ("portmux_fake_cli", "add_it", "run_it", "connect")
    )
    assert cli.main(["connect", "host:1"]) == 7
    assert seen[0].target == "host:1"


# -- through a real process: python -m portmux --------------------------------------------


def test_python_m_portmux_check_ok_and_bad(good: Path, bad: Path) -> None:
    result = run_module("check", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{good}: ok (1 listener, 2 routes)"
    assert "route 'app': proxy HTTP per request" in result.stdout
    assert result.stderr == ""
    result = run_module("check", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[1] == f"{bad}:6: route[0].match.service: expected a string, got 42"


def test_python_m_portmux_checks_example_and_default(tmp_path: Path) -> None:
    example = REPO / "examples" / "one-port.toml"
    default = REPO / "portmux" / "daemon" / "default.toml"
    result = run_module("check", str(example), str(default), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if not line.startswith("  ")] == [
        f"{example}: ok (1 listener, 8 routes)",
        f"{default}: ok (1 listener, 3 routes)",
    ]
    assert result.stderr == ""
