"""The width `--help` is wrapped at, for any $COLUMNS and any set of terminals on stdout,
stderr and stdin: it never raises, reads $COLUMNS as argparse's own rule (shutil) does, and
chimneyd's copy of the rule (chimneyd/daemon.py, which may import nothing from the clients)
agrees with chimney_client.ctl_help's. COLUMNS="²" (a digit to str.isdigit, not to int)
crashed every --help with ValueError; COLUMNS=" 120" was ignored where argparse reads 120."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimney_client.ctl_help import NO_TERMINAL_COLUMNS, help_columns
from chimneyd.daemon import _HelpFormatter as DaemonHelpFormatter

#: a terminal's width on fd 0, 1 or 2, or None: not a terminal
_SIZES = st.one_of(st.none(), st.integers(0, 500))
_COLUMNS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "abc",
            "0",
            "-5",
            "²",
            " 120",
            "120 ",
            "+90",
            "1_20",
            "\u0663\u0660",
            "\uff11\uff12\uff10",
        ]
    ),
    st.text(max_size=6),
    st.integers(-10, 400).map(str),
)


def _patch(monkeypatch: pytest.MonkeyPatch, columns: str | None, sizes: list[int | None]) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)

    def size(fd: int = 1) -> os.terminal_size:
        if sizes[fd] is None:
            raise OSError(25, "Inappropriate ioctl for device")
        return os.terminal_size((sizes[fd], 24))

    monkeypatch.setattr(os, "get_terminal_size", size)


def _shutil_columns(columns: str | None) -> int:
    """What argparse (shutil.get_terminal_size) takes from $COLUMNS alone; 0: nothing."""
    try:
        return int(columns) if columns is not None else 0
    except ValueError:
        return 0


@given(columns=_COLUMNS, sizes=st.lists(_SIZES, min_size=3, max_size=3))
def test_the_width_rule(columns: str | None, sizes: list[int | None]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        if "\x00" in (columns or ""):
            columns = None  # an environment cannot hold it
        _patch(mp, columns, sizes)
        width = help_columns()
        daemon = DaemonHelpFormatter("chimneyd")._width + 2  # type: ignore[attr-defined]
    assert width == daemon, f"chimneyd wraps at {daemon}, chimneyctl at {width}"
    env = _shutil_columns(columns)
    terminals = [s for s in (sizes[1], sizes[2], sizes[0]) if s]
    expected = env if env > 0 else (terminals[0] if terminals else NO_TERMINAL_COLUMNS)
    assert width == expected, (columns, sizes)


def test_columns_as_shutil_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for columns in (" 120", "+120"):
        monkeypatch.setenv("COLUMNS", columns)
        assert shutil.get_terminal_size().columns == 120
        assert help_columns() == 120, f"COLUMNS={columns!r}"
    monkeypatch.setenv("COLUMNS", "²")
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((100, 24)))
    assert help_columns() == 100
