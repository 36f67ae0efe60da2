"""The command lines README.md and the pages under docs/ tell a user to type are ones the tools
accept: every `chimneyctl`, `chimneyd`, `chimney-soak` and `chimney-peer` line (in a shell or
console block, or written inline), and the options `make run ARGS=...` and `make soak ARGS=...`
hand to the daemon and the soak, parse with the tools' own parsers and pass the checks each
makes before it starts: chimneyctl's (fault kinds and keys; a `run` line's commands one by one,
with the names they use) and the soak's (options together, its plan and `--faults`). (docs/rpc.md's
`$ chimneyctl` lines are test_rpc_reference.py's too, with the answers they show.)"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docs.mdcheck import DOCS, ROOT, load

#: the README and every page under docs/ (a list kept by hand left docs/metrics.md's
#: `chimneyd --metrics ...` and docs/rpc.md's lines other than `$ chimneyctl` unchecked)
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
TOOLS = ("chimneyctl", "chimneyd", "chimney-soak", "chimney-peer")
#: words that stand for something the reader fills in (`chimneyctl watch ID`)
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$|\.\.\.|…|^\[")
_SHELL_END = re.compile(r"\s(?:#|\||&&|&(?:\s|$)|2>&1)")


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, inline) of every shell line and inline code span of the page."""
    doc = load(path)
    for token in doc.tokens:
        line = token.map[0] + 1 if token.map else 0
        if token.type == "fence" and token.info.strip() in ("sh", "console"):
            text = re.sub(r"\\\n\s*", "", token.content)  # a command continued with `\`
            for row in text.splitlines():
                if token.info.strip() == "console":
                    if not row.startswith("$ "):
                        continue  # output
                    row = row[2:]
                yield line, row, False
        elif token.type == "inline" and token.children:
            for child in token.children:
                if child.type == "code_inline":
                    yield line, child.content, True


def _command(text: str) -> tuple[str, list[str]] | None:
    """(tool, its arguments) of a line that runs one of the tools, else None."""
    text = _SHELL_END.split(" " + text.strip(), maxsplit=1)[0].strip()
    try:
        words = shlex.split(text)
    except ValueError:
        return None  # not a command line (prose in backticks)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]  # VAR=value before the command
    if not words:
        return None
    tool = words[0].rsplit("/", 1)[-1]
    if tool in TOOLS and (len(words) == 1 or words[0] in TOOLS or words[0].startswith(".venv/")):
        return tool, words[1:]
    if words[0] == "make" and len(words) > 1 and words[1] in ("run", "soak"):
        args = next((w[5:] for w in words[2:] if w.startswith("ARGS=")), "")
        return ("chimneyd" if words[1] == "run" else "chimney-soak"), shlex.split(args)
    return None


def _parse_quietly(parse: Callable[[list[str]], object], args: list[str]) -> object:
    """Run an argparse parser; its error (SystemExit 2 and the message) becomes an AssertionError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse(args)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help, --version
            return None
        raise AssertionError(err.getvalue().strip()) from None


def _check_ctl(args: list[str]) -> None:
    from chimney_client import ctl

    # the checks `chimneyctl` makes before it connects, not its parser's alone: a fault's
    # kind and keys (`_check`), a run/shell-only command alone, and a run's lines each as
    # `_run` reads them (`_parse_line`) with the names they use made by earlier ones
    try:
        ns = ctl.build_parser().parse_args(args)
        ctl._check(ns)
        if ns.command in ctl.SESSION_ONLY:
            raise AssertionError(f"{ns.command!r} runs only inside run/shell")
        if ns.command == "run":
            line_parser = ctl.build_line_parser()
            ctl._check_names([(c, ctl._parse_line(line_parser, c)) for c in ns.commands])
    except ctl.UsageError as exc:
        raise AssertionError(str(exc)) from None
    except ctl._HelpShown:
        pass


def _check_daemon(args: list[str]) -> None:
    from chimneyd.daemon import parse_args

    _parse_quietly(parse_args, args)


def _check_soak(args: list[str]) -> None:
    from chimney_client.soak import cli
    from chimney_client.soak.plan import make_plan

    ns = _parse_quietly(cli.build_parser().parse_args, args)
    if isinstance(ns, argparse.Namespace):
        # what `main` refuses before it starts, as it does: options that clash only together,
        # then the plan (its --faults schedule too) — on a machine with room for every
        # connection (the plan's file-descriptor check is this machine's, not the line's)
        cli._check_together(ns)
        make_plan(ns, 1 << 24)


def _check_peer(args: list[str]) -> None:
    from chimney_client.peer import build_parser

    _parse_quietly(build_parser().parse_args, args)


CHECKS: dict[str, Callable[[list[str]], None]] = {
    "chimneyctl": _check_ctl,
    "chimneyd": _check_daemon,
    "chimney-soak": _check_soak,
    "chimney-peer": _check_peer,
}


def commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in PAGES:
        for line, text, inline in _lines(path):
            command = _command(text)
            if command is None:
                continue
            tool, args = command
            if inline and len(args) < 2:
                continue  # a tool or its option named in a sentence (`chimneyd --config`)
            if any(_PLACEHOLDER.search(word) for word in args):
                continue
            where = f"{path.relative_to(ROOT).as_posix()}:{line}"
            found.append((where, tool, args))
    return found


COMMANDS = commands()


def test_every_page_with_a_command_is_checked() -> None:
    """A page left out of PAGES has its command lines checked by nothing: every page of the
    docs and the README that gives one is in PAGES (docs/rpc.md's `$ chimneyctl` lines are
    test_rpc_reference.py's too, but not its other lines: `chimneyd --config ... &`)."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    missed = []
    for path in pages:
        if path in PAGES:
            continue
        lines = [line for line, text, _ in _lines(path) if _command(text) is not None]
        if lines:
            missed.append(f"{path.relative_to(ROOT).as_posix()} (lines {lines})")
    assert not missed, f"pages with command lines nobody checks: {missed}"


def test_the_pages_have_commands_of_every_tool() -> None:
    tools = {tool for _, tool, _ in COMMANDS}
    assert tools == set(TOOLS), f"found commands of {sorted(tools)} only"
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("where, tool, args", COMMANDS, ids=[f"{w} {t}" for w, t, _ in COMMANDS])
def test_each_command_line_parses(where: str, tool: str, args: list[str]) -> None:
    try:
        CHECKS[tool](args)
    except (AssertionError, ValueError) as exc:
        pytest.fail(f"{where}: `{tool} {shlex.join(args)}` is refused: {exc}")


@pytest.mark.parametrize(
    "line",
    [
        "chimneyctl run 'connect 127.0.0.1 9000 as c' 'sned c hi'",
        "chimneyctl update",
        "chimneyd --listen",
        "chimney-soak --faults target_failur@8s",
        'make run ARGS="--shardz 2"',
        # what chimneyctl refuses after its parser: a fault's kind or keys, a name no earlier
        # line made, a run/shell-only command alone
        "chimneyctl run 'connect 127.0.0.1 9000 as c' 'fault inject peer_rest conn=c'",
        "chimneyctl fault inject peer_reset conn=1 bogus=2",
        "chimneyctl run 'connect 127.0.0.1 9000 as c' 'recv d 10'",
        "chimneyctl events --count 1",
        # what chimney-soak refuses after its parser: options that only clash together, a plan
        "chimney-soak --connections 10 --workers 20",
        "chimney-soak --peer 127.0.0.1:9000 --faults peer_reset@5s",
    ],
)
def test_a_wrong_line_is_caught(line: str) -> None:
    command = _command(line)
    assert command is not None
    tool, args = command
    with pytest.raises((AssertionError, ValueError)):
        CHECKS[tool](args)
