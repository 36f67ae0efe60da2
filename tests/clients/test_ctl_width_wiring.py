"""The parts of chimneyctl's fitting to the terminal that the width tests left free to break:
the live `top` (not `--once`) is laid out at the terminal's width, `info` wraps its rpc limits
at it, a table one space per column too wide is printed whole with the padding halved, and a
pipe gets a wide table exactly as rich renders it (scripts read it)."""

from __future__ import annotations

import argparse
import io
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
import rich.live
from rich.console import Console, RenderableType

from chimney_client import ctl
from chimney_client.ctl_live import top
from chimney_client.ctl_render import Output, render_text, table
from tests.clients.test_ctl_top_width import LAYERS, _Client, _Tty


class _Stop(Exception):
    pass


class _Live:
    """rich's Live, recording what it is given instead of drawing a screen."""

    shown: list[RenderableType] = []

    def __init__(self, **kw: Any) -> None:
        pass

    def __enter__(self) -> _Live:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, renderable: RenderableType, refresh: bool = False) -> None:
        self.shown.append(renderable)


def test_live_top_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(rich.live, "Live", _Live)
    _Live.shown = []
    sleeps = 0

    def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 2:  # the first sample's, then one frame's
            raise _Stop

    monkeypatch.setattr(time, "sleep", sleep)
    args = SimpleNamespace(rpc="127.0.0.1:7411", token="ADMIN")
    session = SimpleNamespace(client=_Client(), out=Output(json_mode=False, file=_Tty()), args=args)
    with pytest.raises(_Stop):
        top(session, 0.01, 5, False)  # type: ignore[arg-type]
    assert _Live.shown, "top drew no frame"
    text = render_text(Console(width=80, file=io.StringIO()), _Live.shown[-1])
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    rows = [line for line in lines if line.split(" ", 1)[0] in LAYERS]
    assert [r.split()[0] for r in rows] == list(LAYERS), f"layer names lost: {lines}"
    heading = next(line for line in lines if line.startswith("layer "))
    assert "…" not in heading, f"the live view is not the compact one at 80 columns: {heading!r}"


def test_info_wraps_the_rpc_limits_at_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    limits = {f"max_{name}": 1_000_000 for name in ("connections", "clients", "in_flight", "bytes",
                                                     "listeners", "subscriptions", "faults")}  # fmt: skip
    info = {"version": "0.1", "contract": 1, "layers": [], "rpc": {"limits": limits}}
    out = _Tty()
    session = SimpleNamespace(client=SimpleNamespace(stack_info=lambda: info),
                              out=Output(json_mode=False, file=out))  # fmt: skip
    ctl._info(session, argparse.Namespace(id=None, live=False))  # type: ignore[arg-type]
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).splitlines()
    # rich would wrap a longer line too, but at column 0: the limits' words hang under theirs
    start = next(i for i, line in enumerate(lines) if line.startswith("rpc limits "))
    rpc = lines[start : start + 4]
    assert all(line.startswith(" " * len("rpc limits ")) for line in rpc[1:]), lines
    assert [w for line in rpc for w in line.split() if "=" in w] == [
        f"{k}={v}" for k, v in limits.items()
    ], lines
    assert not [line for line in lines if len(line) > 60], f"wider than 60 columns: {lines}"


def _wide() -> Any:
    """Eight columns: 85 wide with rich's padding, 78 with it halved."""
    t = table(*[f"column{i}" for i in range(8)])
    t.add_row(*[f"value{i:03d}" for i in range(8)])
    return t


def test_a_table_that_fits_with_half_the_padding_is_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = _Tty()
    Output(json_mode=False, file=out).table(_wide())
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "…" not in text, text
    assert text.splitlines()[-1].split() == [f"value{i:03d}" for i in range(8)], text


def test_a_pipe_gets_the_table_as_rich_renders_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    wide = table("name", *[f"a_long_column_heading_{i}" for i in range(7)])
    wide.add_row("tcpip-with-a-long-name", *[str(10**12 + i) for i in range(7)])
    out = io.StringIO()
    Output(json_mode=False, file=out).table(wide)
    expected = table("name", *[f"a_long_column_heading_{i}" for i in range(7)])
    expected.add_row("tcpip-with-a-long-name", *[str(10**12 + i) for i in range(7)])
    plain = Console(file=io.StringIO(), width=160, highlight=False, markup=False, soft_wrap=True)
    assert out.getvalue() == render_text(plain, expected) + "\n"
