"""What the pages under docs/ show chimneyctl printing is what it prints: every `$ chimneyctl`
line of a `console` block runs, in page order, against a real daemon started for the page (and,
after a `$ chimneyd --config FILE &` line in the block, against one started with that
configuration), and each line of output the page shows must be among what the command printed.

test_doc_commands.py checks that these lines parse; this checks their answers, so an output
the tool has since grown (a key, a column) does not leave a page showing a stale one. Numbers
are compared as numbers, not values (ids, ports, sequence numbers and times change from run to
run), runs of spaces as one (a column's width follows its widest cell), and a `…` line stands
for lines left out. A reader who runs a page's examples in order on a fresh daemon sees the same
ids the page shows (rpc.md's `fault clear 1` clears its own `fault.inject` example's fault);
that order is kept here, one daemon per page.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chimney_client import ctl
from tests.docs.mdcheck import DOCS, ROOT, load
from tests.e2e.support import Daemon, peer_process, start_daemon

#: every page with a `$ chimneyctl` console example (the README's tour is tests/e2e/test_tour.py's)
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.parent == DOCS)
_NUMBER = re.compile(r"0x[0-9A-Fa-f]+|\d+(?:\.\d+)?")
#: the port the pages' examples give the echo peer
DOC_PEER_PORT = "9000"
#: examples whose output past their first lines depends on timing, and where it starts: the
#: last hops of `trace c --limit 2` are the echo's if it came back before the trace was read
TIMING = {"trace c --limit": "seq "}


@dataclass
class Example:
    line: int  # 1-based line of the `$ ` row in the page
    command: str  # without the `$ `
    output: list[str] = field(default_factory=list)
    daemon_args: tuple[str, ...] = ()  # the `$ chimneyd ... &` before it in its block


def examples(path: Path) -> Iterator[Example]:
    """Every `$ chimneyctl` row of the page's console blocks with the output shown under it."""
    doc = load(path)
    for token in doc.tokens:
        if token.type != "fence" or token.info.strip() != "console" or not token.map:
            continue
        daemon_args: tuple[str, ...] = ()
        current: Example | None = None
        for offset, row in enumerate(token.content.splitlines()):
            if row.startswith("$ "):
                if current is not None:
                    yield current
                    current = None
                words = shlex.split(row[2:])
                if words[0] == "chimneyd" and words[-1] == "&":
                    daemon_args = tuple(words[1:-1])
                elif words[0] == "chimneyctl":
                    current = Example(token.map[0] + 2 + offset, row[2:], daemon_args=daemon_args)
            elif current is not None:
                current.output.append(row)
        if current is not None:
            yield current


#: `chimneyctl info`'s build: the page shows the plain one, the compiled build's daemon (`make
#: test-compiled`) says so
_BUILD = re.compile(r"\b(?:python|compiled) build\b")


def normal(text: str) -> str:
    return " ".join(_NUMBER.sub("#", _BUILD.sub("BUILD build", text)).split())


def missing_lines(shown: list[str], out: str, err: str, command: str) -> list[str]:
    """The lines the page shows that the command did not print: stdout's in order (an `event`
    line in any order, as events print after whichever command they came in during), stderr's
    (`error:`, `note:`, `hint:`) anywhere in stderr."""
    got = [normal(line) for line in out.splitlines()]
    got_err = [normal(line) for line in err.splitlines()]
    stop = next((start for key, start in TIMING.items() if key in command), None)
    missing: list[str] = []
    at = 0
    for line in shown:
        if stop is not None and line.startswith(stop):
            break
        if not line.replace("…", "").strip() or set(line.strip()) <= {"─"}:
            continue  # left out, or a table's rule (as wide as its widest row)
        want = normal(line)
        if want.startswith(("error:", "note:", "hint:")):
            if want not in got_err:
                missing.append(line)
        elif want.startswith("event "):
            if want not in got:
                missing.append(line)
        elif want in got[at:]:
            at = got.index(want, at) + 1
        else:
            missing.append(line)
    return missing


def _start(tmp_path: Path, args: tuple[str, ...]) -> Daemon:
    # a configuration named by the page is one of the checkout's (deploy/teaming.toml)
    resolved = tuple(str(ROOT / a) if (ROOT / a).is_file() else a for a in args)
    return start_daemon(tmp_path, args=resolved)


@pytest.mark.parametrize("page", [p for p in PAGES if any(examples(p))], ids=lambda p: p.name)
def test_console_examples_print_what_the_page_shows(
    page: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemons: dict[tuple[str, ...], Daemon] = {}
    failures: list[str] = []
    try:
        with peer_process() as (_, peer_port):
            for ex in examples(page):
                if ex.daemon_args not in daemons:
                    daemons[ex.daemon_args] = _start(tmp_path, ex.daemon_args)
                d = daemons[ex.daemon_args]
                words = shlex.split(ex.command.replace(DOC_PEER_PORT, str(peer_port)))
                capsys.readouterr()
                ctl.main(["--rpc", d.address, *words[1:]])
                out, err = capsys.readouterr()
                if missing := missing_lines(ex.output, out, err, ex.command):
                    failures.append(
                        f"{page.name}:{ex.line} `{ex.command}` did not print:\n  "
                        + "\n  ".join(missing)
                        + f"\nit printed:\n{out}{err}"
                    )
        for d in daemons.values():
            d.assert_clean_stop()
    finally:
        for d in daemons.values():
            d.kill()
    assert not failures, "\n\n".join(failures)


def test_the_check_reads_the_pages_examples() -> None:
    """Parsing the pages finds the examples: rpc.md's, with their output, and its teaming one
    after the `chimneyd --config deploy/teaming.toml &` line of its block."""
    found = list(examples(DOCS / "rpc.md"))
    assert len(found) > 20
    assert all(ex.output for ex in found)
    assert any(ex.daemon_args == ("--config", "deploy/teaming.toml") for ex in found)
    assert any(ex.command.startswith("chimneyctl") for ex in examples(DOCS / "faults.md"))


@pytest.mark.parametrize(
    "shown, out",
    [
        (["objects.tcpip  path PathMtu=65495"], "objects.tcpip path PathMtu=1; path_handles h=3\n"),
        (["conn 1", "sent 2 bytes"], "sent 2 bytes\nconn 1\n"),  # out of order
        (["error: TIMEOUT: no connection on listener 1"], "listener 1\n"),  # not on stderr
    ],
)
def test_a_stale_output_is_caught(shown: list[str], out: str) -> None:
    assert missing_lines(shown, out, "", "info c")


def test_the_build_that_answers_is_no_difference() -> None:
    shown = ["chimneyd 0.1.0 · contract 1 · python build · allocator malloc"]
    out = "chimneyd 0.1.0 · contract 1 · compiled build · allocator malloc\n"
    assert missing_lines(shown, out, "", "info") == []
    assert missing_lines(shown, out.replace("malloc", "pymalloc"), "", "info")


def test_ids_widths_and_left_out_lines_are_not_differences() -> None:
    shown = ["conn 1", "…", "layer   kind", "─────", "tcpip   host", "event conn 1: closed"]
    out = "conn 17\nevent conn 17: closed\nextra\nlayer kind\n──\ntcpip host\n"
    assert missing_lines(shown, out, "", "info") == []
