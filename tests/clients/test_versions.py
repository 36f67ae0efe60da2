"""Every command-line tool answers `--version` as chimneyd and chimneyctl do: its name and the
installed chimneyd version, on stdout, exit status 0."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

import pytest

from chimney_client import ctl
from chimney_client.peer import main as peer_main
from chimney_client.soak import main as soak_main


@pytest.mark.parametrize(
    ("name", "main"),
    [("chimney-peer", peer_main), ("chimney-soak", soak_main), ("chimneyctl", ctl.main)],
)
def test_every_tool_says_its_version(
    name: str, main: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(["--version"])
    except SystemExit as exc:  # argparse's version action exits
        status = exc.code  # type: ignore[assignment]
    out = capsys.readouterr().out
    assert status == 0
    assert out.split()[:2] == [name, metadata.version("chimneyd")], out
