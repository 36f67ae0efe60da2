"""`--settle` is bounded by what the worker's wind-down allows: the slots settle for up to
`--settle` after the hold, and the wind-down (`WIND_DOWN_S`, and the coordinator's wait for the
workers' finals after it) gives them SETTLE_S plus a round trip's timeout. A longer settle
would be cut short there: the slots still owed an outcome reported stuck and cancelled, their
faults missing, though the run asked to wait for them. So a settle above SETTLE_S is a usage
error, not a silently shorter wait."""

from __future__ import annotations

import pytest

from chimney_client.soak.cli import build_parser
from chimney_client.soak.limits import SETTLE_S, WIND_DOWN_S


def test_a_settle_longer_than_the_wind_down_allows_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--settle", f"{WIND_DOWN_S:g}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--settle" in err and f"{SETTLE_S:g}" in err


@pytest.mark.parametrize("given", ["10", f"{SETTLE_S:g}", "500ms"])
def test_a_settle_up_to_the_default_is_taken(given: str) -> None:
    args = build_parser().parse_args(["--settle", given])
    assert 0 < args.settle <= SETTLE_S
