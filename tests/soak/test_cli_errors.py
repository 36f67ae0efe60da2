"""`chimney-soak` refuses what cannot work before it starts anything: a bad option value, an
address that does not parse, a daemon that is not there, a fault the topology cannot take. Each
is a usage error (exit 2) that says what is wrong, never a traceback or a full report."""

from __future__ import annotations

import pytest

from chimney_client.soak import main


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `chimney-soak argv`; it must stop with exit 2. Returns its stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--duration", "2x"), "expected a duration like 30s, 500ms, 1.5m"),
        (("--payload", "1x"), "not a size: '1x'"),
        (("--payload", "4k:1k"), "low end above high end"),
    ],
)
def test_a_bad_option_value_says_what_is_expected(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    err = usage_error(capsys, *argv)
    assert says in err, err
    assert "parse_" not in err, err  # argparse's "invalid parse_duration value"


@pytest.mark.parametrize("schedule", ["peer_reset@2x", "target_failure/for=2x"])
def test_a_bad_duration_in_the_fault_schedule_names_its_item(
    capsys: pytest.CaptureFixture[str], schedule: str
) -> None:
    err = usage_error(capsys, "--faults", schedule)
    assert f"fault {schedule!r}: expected a duration like 30s" in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--rpc", "127.0.0.1:abc"), "--rpc '127.0.0.1:abc': "),
        (("--rpc", "127.0.0.1:99999"), "--rpc '127.0.0.1:99999': "),
        # with --rpc: a soak that got past the check would not spawn a daemon
        (("--rpc", "127.0.0.1:1", "--peer", "127.0.0.1:abc"), "--peer '127.0.0.1:abc': "),
        (("--rpc", "127.0.0.1:1", "--peer", "unix:/tmp/x.sock"), "a peer is HOST:PORT"),
    ],
)
def test_an_address_that_does_not_parse_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    err = usage_error(capsys, *argv, "-n", "1", "--duration", "1")
    assert says in err, err
    assert "Traceback" not in err, err
