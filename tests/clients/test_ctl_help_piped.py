"""`chimneyctl --help | less`: piped, a command's help is wrapped to the terminal the user
reads it in (the pager shows it there; stderr and stdin are still that terminal), as it is
unpiped, not at argparse's 78 columns whatever the terminal; with no terminal at all (a file,
CI) at 78 as before; $COLUMNS still wins. Every command pyproject installs but chimney-soak
(its own engineer's)."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import tomllib
from pathlib import Path

import pytest

from chimney_client import ctl
from chimney_client.ctl_help import help_columns
from tests.clients.test_ctl_help_narrow import _parsers

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    name: target
    for name, target in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ].items()
    if name != "chimney-soak"
}
#: the pty's width: wider than argparse's fallback, narrower than the longest help lines
PTY_COLUMNS = 130


def _help(name: str, stderr: int, columns: int | None = None) -> list[str]:
    """`name --help` piped, its stderr `stderr`, $COLUMNS `columns` (None: unset)."""
    module, func = SCRIPTS[name].split(":")
    code = f"import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    done = subprocess.run(
        [sys.executable, "-c", code, "--help"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout.decode().splitlines()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_piped_help_is_wrapped_to_the_terminal_on_stderr(name: str) -> None:
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, PTY_COLUMNS, 0, 0))
        lines = _help(name, slave)
    finally:
        os.close(slave)
        os.close(master)
    assert lines == _help(name, subprocess.DEVNULL, PTY_COLUMNS), (
        f"{name} --help piped from a {PTY_COLUMNS}-column terminal is not wrapped to it"
    )
    assert max(len(line) for line in lines) > 78, lines


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_with_no_terminal_is_wrapped_at_78(name: str) -> None:
    assert _help(name, subprocess.DEVNULL) == _help(name, subprocess.DEVNULL, 80)


def test_every_chimneyctl_help_takes_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's own parser (`chimneyctl send --help`...), not only the main page's."""
    monkeypatch.delenv("COLUMNS", raising=False)

    def size(fd: int) -> os.terminal_size:
        if fd != 2:
            raise OSError(25, "Inappropriate ioctl for device")  # stdout piped, stdin too
        return os.terminal_size((PTY_COLUMNS, 24))

    monkeypatch.setattr(os, "get_terminal_size", size)
    assert help_columns() == PTY_COLUMNS
    widths = {prog: _width(p) for prog, p in _parsers().items()}
    assert widths == dict.fromkeys(widths, PTY_COLUMNS - 2)
    monkeypatch.setenv("COLUMNS", "60")
    assert _width(ctl.build_parser()) == 58


def _width(parser: argparse.ArgumentParser) -> int:
    """The width `parser`'s help is wrapped at (argparse keeps it on its formatter)."""
    return int(parser._get_formatter()._width)  # type: ignore[attr-defined]
