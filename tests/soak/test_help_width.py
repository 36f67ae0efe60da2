"""`chimney-soak --help` in an 80-column terminal (`COLUMNS=80`): argparse wraps the options to
the terminal, but the description and the epilog (the fault schedule, the verdict) were laid
out in lines of up to 100 columns, kept as written: 97 of 202 lines were wider than 80."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chimney_client.soak.cli import build_parser
from chimney_client.soak.faults import FAULT_KINDS, parse_faults
from tests.soak.support import soak_env

pytestmark = pytest.mark.soak


@pytest.mark.parametrize("columns", [80, 72])
def test_the_help_fits_a_narrow_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    text = build_parser().format_help()
    long = [line for line in text.splitlines() if len(line) > columns]
    assert not long, f"{len(long)} help line(s) wider than {columns} columns: {long}"


def test_the_narrow_help_keeps_every_kind_and_its_examples_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each fault kind still has its row (its name first, its text hanging under it), and an
    example schedule is one line to copy, never split."""
    monkeypatch.setenv("COLUMNS", "80")
    lines = build_parser().format_help().splitlines()
    for kind in FAULT_KINDS:
        [row] = [i for i, line in enumerate(lines) if line.startswith(f"    {kind} ")]
        assert lines[row + 1].startswith(" " * 19) or len(lines[row]) < 80, lines[row : row + 2]
    examples = [line for line in lines if line.lstrip().startswith("example: --faults ")]
    assert len(examples) >= 2, examples
    for line in examples:
        # a whole schedule: each of its items parses (the line was not cut in one)
        assert parse_faults(line.split("--faults ", 1)[1]), line


def test_the_command_itself_fits(tmp_path: Path) -> None:
    """`chimney-soak --help` as a user runs it, COLUMNS=80."""
    env = {**soak_env(tmp_path), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "chimney_client.soak", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "fault schedule (--faults)" in out
    assert max(len(line) for line in out.splitlines()) <= 80
