"""The venv install of the Makefile (`pip_install`): pip's output goes to `.venv/pip-install.log`;
what it shows is every line but the warnings of a configured local extra index that lacks a
package ("Location 'file:...' is ignored"), harmless when the package came from the next index,
and the recipe exits with pip's status. When pip fails those warnings are the cause as often as
not (an index directory gone, a machine offline): the whole log is shown then.

The recipe's commands are the ones `make -n` prints (make runs nothing), run with `sh` against
a stand-in for the venv's python that prints what pip would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOISE = "WARNING: Location 'file:///opt/pypi/simple/foo/' is ignored: it is neither a file nor a directory."
OTHER = "WARNING: something pip means"
ERROR = "ERROR: Could not find a version that satisfies the requirement foo (from versions: none)"


def _install_lines(tmp_path: Path) -> list[str]:
    """The pip install commands of `make venv`, as make would run them, in `tmp_path`."""
    make = shutil.which("make")
    assert make is not None, "make is needed to expand the Makefile"
    venv = tmp_path / "venv"
    (tmp_path / "pyproject.toml").touch()  # the stamp's prerequisite: the recipe runs with -B
    proc = subprocess.run(
        [make, "-n", "-B", "-f", str(ROOT / "Makefile"), f"VENV={venv}", "venv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " -m pip install " in line]
    assert len(lines) == 2, proc.stdout
    return lines


def _fake_pip(tmp_path: Path, status: int) -> None:
    """The venv's python: prints a harmless warning, another warning and, failing, pip's
    error, then exits with `status`."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = bin_dir / "python"
    error = f'echo "{ERROR}" >&2\n' if status else ""
    python.write_text(f'#!/bin/sh\necho "{NOISE}" >&2\necho "{OTHER}"\n{error}exit {status}\n')
    python.chmod(0o755)


def _run(line: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", line], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )


@pytest.mark.parametrize("index", [0, 1], ids=["upgrade_pip", "install_project"])
def test_a_good_install_drops_only_the_local_index_warnings(tmp_path: Path, index: int) -> None:
    line = _install_lines(tmp_path)[index]
    _fake_pip(tmp_path, 0)
    proc = _run(line, tmp_path)
    assert proc.returncode == 0, proc
    assert OTHER in proc.stderr and NOISE not in proc.stderr + proc.stdout, proc
    assert NOISE in (tmp_path / "venv" / "pip-install.log").read_text()


@pytest.mark.parametrize("index", [0, 1], ids=["upgrade_pip", "install_project"])
def test_a_failed_install_shows_everything_and_fails(tmp_path: Path, index: int) -> None:
    line = _install_lines(tmp_path)[index]
    _fake_pip(tmp_path, 1)
    proc = _run(line, tmp_path)
    assert proc.returncode == 1, proc
    # the error, and the warning that says why: the local index has no such package
    for text in (ERROR, OTHER, NOISE):
        assert text in proc.stderr, (text, proc)
