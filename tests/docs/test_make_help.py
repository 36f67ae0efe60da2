"""`make help` lists every target the Makefile has, one line each with what it does, and
runs nothing else: it needs no `.venv` (a newcomer's first command may be it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.docs.mdcheck import ROOT
from tests.docs.test_make_targets import _UNNAMED, makefile_targets


def _help() -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed")
    # -n first: `make help` must run no other target (no venv, no pip), only its own recipe
    dry = subprocess.run(
        [make, "-n", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    assert "pip" not in dry.stdout and "venv" not in dry.stdout, dry.stdout
    done = subprocess.run(
        [make, "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"make help failed: {done.stderr}"
    return done.stdout.splitlines()


def test_make_help_lists_every_target_with_a_line() -> None:
    lines = _help()
    listed: dict[str, str] = {}
    for line in lines:
        if line.startswith("  ") and line.split():
            name, _, what = line.strip().partition(" ")
            listed[name] = what.strip()
    missing = sorted(makefile_targets() - _UNNAMED - set(listed))
    assert not missing, f"make help does not list: {missing}\n" + "\n".join(lines)
    unknown = sorted(set(listed) - makefile_targets())
    assert not unknown, f"make help lists targets the Makefile lacks: {unknown}"
    bare = sorted(name for name, what in listed.items() if not what)
    assert not bare, f"make help gives no line for: {bare}"
    assert not [line for line in lines if len(line) > 80], "make help wider than 80 columns"
