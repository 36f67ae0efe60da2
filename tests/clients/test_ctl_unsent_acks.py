"""`chimneyctl stats` shows a target's unsent ACKs (docs/metrics.md
`layers.<layer>.unsent_acks`, spec §5.2): a column once any layer has one that is not 0, each
layer's non-zero kinds in it; not among the calls the table sums, which are NDIS calls only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.mini_server import MiniRpc, MiniServer
from tests.clients.mini_server import run_ctl as run

ZERO = {"challenge_rst": 0, "challenge_syn": 0, "ack_syn": 0, "ack_urg": 0}


def _with_unsent(monkeypatch: pytest.MonkeyPatch, per_layer: dict[str, dict[str, int]]) -> None:
    """The mini server's `stack.stats` answer, with `unsent_acks` in the layers named (a
    target's; the others report none, as a daemon's host and IM layers do)."""
    dispatch = MiniRpc.dispatch

    async def patched(self: MiniRpc, method: str, params: list[Any]) -> Any:
        result = await dispatch(self, method, params)
        if method == "stack.stats":
            result["layers"] = {name: dict(m) for name, m in result["layers"].items()}
            for name, unsent in per_layer.items():
                result["layers"][name]["unsent_acks"] = dict(unsent)
        return result

    monkeypatch.setattr(MiniRpc, "dispatch", patched)


def _table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = out.splitlines()
    header_at = next(i for i, line in enumerate(lines) if "offloads_active" in line)
    header = lines[header_at].split()
    rows = {}
    for line in lines[header_at + 1 :]:
        cells = line.split(maxsplit=len(header) - 1)
        if cells and cells[0] in ("tcpip", "im0", "nic0"):
            rows[cells[0]] = cells
    return header, rows


def test_a_layer_s_unsent_acks_show_once_any_is_not_zero(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_unsent(monkeypatch, {"nic0": {**ZERO, "challenge_rst": 2, "ack_urg": 1}})
    status, out, err = run(capsys, server, "stats")
    assert status == 0, err
    header, rows = _table(out)
    assert header[-3:] == ["calls", "failed", "unsent_acks"]
    assert rows["nic0"][header.index("unsent_acks")] == "challenge_rst=2 ack_urg=1"
    assert rows["nic0"][header.index("calls")] == "7"  # NDIS calls only: none of the ACKs
    for layer in ("tcpip", "im0"):  # no unsent_acks: an empty cell
        assert len(rows[layer]) == len(header) - 1, rows[layer]


def test_no_column_while_every_count_is_zero(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_unsent(monkeypatch, {"nic0": ZERO})
    status, out, err = run(capsys, server, "stats")
    assert status == 0, err
    header, rows = _table(out)
    assert header[-2:] == ["calls", "failed"]
    assert "unsent_acks" not in out
    assert rows["nic0"][header.index("calls")] == "7"


def test_json_mode_carries_them_as_the_daemon_answered(
    capsys: pytest.CaptureFixture[str], server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_unsent(monkeypatch, {"nic0": {**ZERO, "ack_syn": 3}})
    status, out, err = run(capsys, server, "--json", "stats")
    assert status == 0, err
    assert '"unsent_acks": {"challenge_rst": 0, "challenge_syn": 0, "ack_syn": 3' in out
