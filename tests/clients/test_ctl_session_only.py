"""`events` waits for the events of a `subscribe` made earlier in the same run or shell. Alone,
`chimneyctl events` has subscribed to nothing and can never print anything: it is refused as a
usage error at once, as `top` is inside a run, instead of waiting until the daemon closes the
idle client (`rpc.idle_timeout_s`, 5 minutes) and reporting a lost connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from chimney_client import ctl


@pytest.mark.parametrize("args", [["events"], ["events", "--count", "2"], ["--json", "events"]])
def test_events_alone_is_a_usage_error(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # no daemon there: the refusal must come before any connect
    status = ctl.main(["--rpc", f"unix:{tmp_path / 'none.sock'}", *args])
    out, err = capsys.readouterr()
    assert status == ctl.EXIT_USAGE
    said = out + err
    assert "run/shell" in said and "subscribe" in said
    assert "cannot connect" not in said


def test_events_in_a_run_is_still_checked_and_taken() -> None:
    parser = ctl.build_line_parser()
    args = ctl._parse_line(parser, "events --count 2 --timeout-ms 100")
    assert (args.command, args.count, args.timeout_ms) == ("events", 2, 100)
