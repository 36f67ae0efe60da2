"""The locustfile's `--chimney-*` options refuse nonsense at start: a negative size or rate, nan
or infinity is a usage error (exit 2) naming the option, before any user runs. Anything that
imports locust runs in a child process (see locust_checks.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.support import ROOT, child_env

LOCUSTFILE = ROOT / "deploy" / "locustfile.py"

BAD = [
    ("--chimney-payload-bytes", "-1"),
    ("--chimney-payload-bytes", "0"),
    ("--chimney-chunk-bytes", "-5"),
    ("--chimney-chunk-bytes", str(8 * 1024 * 1024 + 1)),  # past tcp.recv's max_bytes
    ("--chimney-upload-rate", "-0.5"),
    ("--chimney-upload-rate", "nan"),
    ("--chimney-reset-rate", "inf"),
    ("--chimney-reset-rate", "-1"),
    ("--chimney-think-ms", "-20"),
    ("--chimney-recv-timeout-ms", "-1"),
    ("--chimney-recv-timeout-ms", "3600001"),  # past tcp.recv's timeout_ms
    ("--chimney-op-timeout-s", "0"),
    ("--chimney-op-timeout-s", "nan"),
    ("--chimney-op-timeout-s", "-inf"),
]


def _check(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.locust_checks", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("option", "value"), BAD)
def test_a_bad_option_is_a_usage_error(option: str, value: str) -> None:
    result = _check("options", f"{option}={value}")
    assert result["exit"] == 2, result
    assert f"argument {option}: must be " in result["error"], result


def test_the_ends_of_each_range_are_taken() -> None:
    result = _check(
        "options",
        "--chimney-payload-bytes=1",
        f"--chimney-chunk-bytes={8 * 1024 * 1024}",
        "--chimney-upload-rate=0",
        "--chimney-reset-rate=0",
        "--chimney-think-ms=0",
        "--chimney-recv-timeout-ms=3600000",
        "--chimney-op-timeout-s=0.001",
    )
    assert result["exit"] is None, result
    assert result["settings"]["chunk_bytes"] == 8 * 1024 * 1024, result
    assert result["settings"]["recv_timeout_ms"] == 3_600_000, result


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_bytes": -1}, "--chimney-chunk-bytes: must be an integer from 1"),
        ({"upload_rate": "nan"}, "--chimney-upload-rate: must be a finite number"),
        ({"reset_rate": "inf"}, "--chimney-reset-rate: must be a finite number"),
        ({"think_ms": 1.5}, "--chimney-think-ms: must be an integer"),
        ({"call_timeout_s": 0}, "call_timeout_s: must be a finite number from 0.001 to 86400"),
    ],
)
def test_settings_made_directly_are_checked_too(kwargs: dict[str, Any], message: str) -> None:
    """A worker takes the master's values without parsing them: the settings check them."""
    assert _check("settings", json.dumps(kwargs))["error"].startswith(message)


def test_locust_stops_at_start_naming_the_option(tmp_path: Any) -> None:
    """The real command line: refused before any user runs (no daemon is needed for that)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "1",
            "-t",
            "1s",
            "--host",
            "127.0.0.1:1",
            "--chimney-chunk-bytes",
            "-5",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "argument --chimney-chunk-bytes: must be an integer from 1 to 8388608 (got -5)" in (
        proc.stderr
    )
    assert "rpc.connect" not in proc.stdout + proc.stderr  # no user ever ran


def test_the_locustfile_run_as_a_script_lists_the_chimney_options() -> None:
    """`locust --help` prints Locust's help before it imports the locustfile, so it cannot show
    the `--chimney-*` options: the locustfile run by Python lists them (deploy/FLEET.md)."""
    proc = subprocess.run(
        [sys.executable, str(LOCUSTFILE)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    options = (ROOT / "deploy" / "FLEET.md").read_text().split("| option | default | meaning |")[1]
    documented = {
        line.split("`")[1].split()[0]
        for line in options.splitlines()[2:]
        if line.startswith("| `--")
    }
    assert documented, options
    for option in documented:
        assert f"\n  {option} " in proc.stdout, (option, proc.stdout)
    # and the other way: every option the locustfile adds has its row in the table
    listed = set(re.findall(r"^  (--chimney-[a-z0-9-]+) ", proc.stdout, re.MULTILINE))
    assert listed, proc.stdout
    assert listed <= documented, sorted(listed - documented)


def test_the_call_limit_follows_the_op_timeout() -> None:
    """No RPC waits longer than the op timeout plus the client's server-wait margin."""
    result = _check("settings", json.dumps({"op_timeout_s": 3}))
    assert result == {"error": None, "call_limit_s": 8.0}, result
