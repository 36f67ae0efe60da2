"""The width the installed commands' `--help` is wrapped at (chimneyctl, chimney-peer; the
daemon's own parser has the same rule, chimneyd/daemon.py): the terminal's the user reads it
in, piped too."""

from __future__ import annotations

import argparse
import os

#: with no terminal at all: argparse's own fallback, a help of 78 columns
NO_TERMINAL_COLUMNS = 80


def help_columns() -> int:
    """$COLUMNS when set, as argparse reads it; else the width of the first of stdout, stderr
    and stdin that is a terminal. `chimneyctl --help | less` is read in the terminal it was typed
    in, which stderr and stdin still are, and is wrapped as it would be unpiped; argparse
    alone asks stdout only, and wrapped it at 78 in a terminal of any width. With no terminal
    (a file, CI) NO_TERMINAL_COLUMNS."""
    # read as shutil.get_terminal_size reads it: int() (" 120" is 120); str.isdigit let "²"
    # through to an int() that raised
    try:
        env = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        env = 0
    if env > 0:
        return env
    for fd in (1, 2, 0):
        try:
            columns = os.get_terminal_size(fd).columns
        except (OSError, ValueError):
            continue
        if columns > 0:
            return columns
    return NO_TERMINAL_COLUMNS


class TerminalWidth(argparse.HelpFormatter):
    """A help formatter (a mixin before argparse's others) wrapped at `help_columns`, two
    columns short of it as argparse's own are."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = help_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)
