"""A command's `--help` wraps its description to the terminal, but a command written in it
(a `code span`, or a "$(...)" to paste) stays on one line: split over two it is no longer a
command one can copy (`chimneyctl events --help`, `update --help`, `completion --help`)."""

from __future__ import annotations

import argparse
import re

import pytest

from chimney_client import ctl
from tests.clients.test_ctl_help import PARSERS

#: what a description quotes to be typed as written: a `code span` or a "double-quoted" one
_SPAN = re.compile(r"`[^`]+`|\"[^\"]+\"")


QUOTING = {
    prog: spans
    for prog, p in PARSERS.items()
    if (spans := [s for s in _SPAN.findall(p.description or "") if " " in s])
}


def test_some_descriptions_quote_commands() -> None:
    # the check below has something to check: these quote commands with spaces in them
    assert {"chimneyctl events", "chimneyctl update", "chimneyctl completion"} <= set(QUOTING)


@pytest.mark.parametrize("columns", [60, 80, 100, 140])
@pytest.mark.parametrize("prog", sorted(QUOTING))
def test_a_quoted_command_stays_on_one_line(
    prog: str, columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = PARSERS[prog].format_help().splitlines()
    split = [s for s in QUOTING[prog] if not any(s in line for line in lines)]
    assert not split, f"`{prog} --help` at {columns} columns splits {split}"


@pytest.mark.parametrize("columns", [60, 100])
def test_prose_is_still_wrapped(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # the spans are kept whole, not the text around them: only a line holding a span is wider
    monkeypatch.setenv("COLUMNS", str(columns))
    for prog, spans in QUOTING.items():
        for line in PARSERS[prog].format_help().splitlines():
            if len(line) > columns and not any(s in line for s in spans):
                pytest.fail(f"`{prog} --help`: {line!r} is wider than {columns}")


def test_a_quoted_command_keeps_its_spacing(monkeypatch: pytest.MonkeyPatch) -> None:
    # the prose's runs of spaces are one space once wrapped; a quoted command's are its own
    monkeypatch.setenv("COLUMNS", "60")
    parser = argparse.ArgumentParser(
        prog="p",
        description="Send it  as written: `chimneyctl run 'send c \"a  b\"'` keeps two spaces.",
        formatter_class=ctl._HelpFormatter,
    )
    text = parser.format_help()
    assert "`chimneyctl run 'send c \"a  b\"'`" in text
    assert "Send it as written:" in text
