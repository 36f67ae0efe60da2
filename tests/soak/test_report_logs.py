"""The report's `logs` row names only what the soak started: a run against a running daemon
(--rpc) has no spawned daemon whose output could be there."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from chimney_client.soak.render import render_report
from tests.soak.test_verdict import _clean, _report


def _table(daemon: dict[str, Any]) -> str:
    base = {"crashed": False, "exit_status": None, "address": "127.0.0.1:7411", "pid": 1}
    r = _report(*_clean(), daemon={**base, **daemon})
    r["daemon"]["logs"] = "/tmp/chimney-soak-x"
    r["connections_detail"].update(opened_total=10)
    console = Console(record=True, width=200)
    render_report(r, console)
    return console.export_text()


@pytest.mark.parametrize(
    ("daemon", "says"),
    [
        ({"spawned": True, "peers_spawned": True}, "the spawned daemon's and the echo peers'"),
        ({"spawned": False, "peers_spawned": True}, "(the echo peers' output)"),
        ({"spawned": False, "peers_spawned": False}, "the soak started no process"),
    ],
)
def test_the_logs_row_names_what_the_soak_started(daemon: dict[str, Any], says: str) -> None:
    text = _table(daemon)
    assert says in text, text
    if not daemon["spawned"]:
        assert "spawned daemon" not in text, text
