"""`chimneyctl COMMAND --help` reads in a terminal: every command's description is wrapped to
the terminal's width like its options, not printed as one line hundreds of characters long; a
copyable example command stays whole."""

from __future__ import annotations

import argparse

import pytest

from chimney_client import ctl

WIDTH = 100


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser (the fault sub-commands too), by its prog."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found[sub.prog] = sub
                found.update(_subparsers(sub))
    return found


PARSERS = _subparsers(ctl.build_parser())


def test_every_command_has_a_help() -> None:
    assert "chimneyctl update" in PARSERS and "chimneyctl fault inject" in PARSERS


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_help_fits_the_terminal(prog: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse sizes its output from $COLUMNS (less 2), as it does in a terminal that wide
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    text = PARSERS[prog].format_help()
    long = [
        line
        for line in text.splitlines()
        if len(line) > WIDTH and not line.lstrip().startswith("e.g. chimneyctl ")
    ]
    assert not long, f"`{prog} --help` has lines wider than {WIDTH} columns: {long}"


def test_wrapping_keeps_the_lines_written_as_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fault kinds under `fault inject --help` are laid out by hand: kept as written
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    text = PARSERS["chimneyctl fault inject"].format_help()
    assert "\n  peer_reset conn\n" in text
    assert "\n      e.g. chimneyctl fault inject peer_reset conn=c\n" in text


def test_rpc_help_names_every_address_form_chimneyctl_takes() -> None:
    from chimney_client.protocol import ADDRESS_FORMS, DEFAULT_PORT, parse_address

    rpc = next(a for a in ctl.build_parser()._actions if "--rpc" in a.option_strings)
    text = " ".join((rpc.help or "").split())
    # a host alone is taken, with the default port: the help says so, not only HOST:PORT
    assert parse_address("localhost") == ("localhost", DEFAULT_PORT)
    assert ADDRESS_FORMS in text, f"--rpc help does not name the forms {ADDRESS_FORMS}: {text}"
