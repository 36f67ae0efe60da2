"""`chimneyctl --help` in an 80-column terminal: the main page and every command's help are
wrapped to the terminal, not only the one-line descriptions; the lines to copy (example
commands, JSON) stay whole, and a terminal wide enough gets the text as it is written."""

from __future__ import annotations

import argparse

import pytest

from chimney_client import ctl

#: lines kept whole however narrow the terminal: what a reader copies
_VERBATIM = ("chimneyctl ", "`chimneyctl ", "printf ", "e.g. chimneyctl ", "{", '"')


def _parsers() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        found[parser.prog] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(ctl.build_parser())
    return found


@pytest.mark.parametrize("columns", [80, 72])
def test_every_help_fits_a_narrow_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    long = [
        (prog, line)
        for prog, parser in _parsers().items()
        for line in parser.format_help().splitlines()
        if len(line) > columns and not line.lstrip().startswith(_VERBATIM)
    ]
    assert not long, f"help lines wider than {columns} columns: {long}"


def test_the_main_page_keeps_its_examples_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = ctl.build_parser().format_help()
    example = "  chimneyctl run 'connect 127.0.0.1 9000 as c' 'send c hello' 'recv c 100'"
    assert example in text
    assert '\n    {"command": "send c hi", "ok": true, "result": 2}\n' in text
    assert "\nexit status: 0 ok, 1 an RPC or connection error, 2 a usage error, 130\n" in text
    assert '\nshell completion: eval "$(chimneyctl completion bash)"' in text
    assert "`chimneyctl fault\nclear ID`" not in text  # a code span is never split


def test_a_wide_terminal_gets_the_text_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = ctl.build_parser().format_help()
    for line in (ctl.DESCRIPTION + ctl.EPILOG).splitlines():
        assert line in text
