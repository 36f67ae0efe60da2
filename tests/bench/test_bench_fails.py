"""The bench fails, loudly, when the daemon does not serve: a run against a daemon that answers
every call with an error, or whose port nobody serves, exits 1 with every daemon section marked
failed (never skipped). And `python -m bench` outside the project's environment says what to
run instead of a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import SECTION_NAMES
from bench.common import Child
from tests.bench.support import ROOT, output, run_bench

pytestmark = pytest.mark.soak  # run by `make test` after the default selection

BROKEN = Path(__file__).with_name("broken_daemon.py")
DAEMON_SECTIONS = ("rpc", "echo", "observe", "memory")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["error", "closed"])
def test_broken_daemon_fails_the_run(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out.json"
    proc = run_bench(
        "--smoke",
        "--sections",
        *DAEMON_SECTIONS,
        "--daemon",
        f"{BROKEN} {mode}",
        "--json",
        str(out),
        timeout=140.0,
    )
    assert proc.returncode == 1, output(proc)
    doc = json.loads(out.read_text())
    for name in DAEMON_SECTIONS:
        sec = doc["sections"][name]
        assert sec["skipped"] is None, (name, sec["skipped"])
        assert sec["problems"], (name, sec)
    assert "FAILED" in proc.stdout


MUTANT = ROOT / "tests" / "soak" / "mutant_daemon.py"


@pytest.mark.timeout(150)
def test_a_daemon_that_damages_one_byte_fails_the_run(tmp_path: Path) -> None:
    """Each section starts its own daemon; this one flips a byte of its 20th tcp.recv answer.
    The rpc section's tcp.send echo and the echo and observe sections' rounds all read it: each
    must fail, saying what was damaged, where a run of the real daemon passes
    (test_bench_smoke.py)."""
    out = tmp_path / "out.json"
    proc = run_bench(
        "--smoke",
        "--sections",
        "rpc",
        "echo",
        "observe",
        "--daemon",
        f"{MUTANT} damage_20th_answer",
        "--json",
        str(out),
        timeout=140.0,
    )
    assert proc.returncode == 1, output(proc)
    sections = json.loads(out.read_text())["sections"]
    assert "the echo came back damaged" in " ".join(sections["rpc"]["problems"]), sections["rpc"]
    assert "integrity error" in " ".join(sections["echo"]["problems"]), sections["echo"]
    observe = " ".join(sections["observe"]["problems"])
    for side in ("off", "on"):  # both daemons damage their 20th answer
        assert re.search(rf"web \+ metrics {side}: [1-9]\d* integrity error", observe), observe


def test_outside_the_environment_says_to_use_make_bench() -> None:
    # -S: no site-packages, as the system Python without the project's .venv
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, output(proc)
    assert "make bench" in proc.stderr and ".venv/bin/python -m bench" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_names_make_bench_and_the_profile_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, output(proc)
    assert "make bench" in proc.stdout
    assert "--profile daemon" in proc.stdout and "py-spy" in proc.stdout
    # the sections the epilog lists are the ones --sections takes
    listed = proc.stdout.split("only these sections (", 1)[1].split(")", 1)[0].split()
    assert tuple(listed) == SECTION_NAMES, listed


def test_a_silent_child_times_out_saying_what_it_was_doing() -> None:
    """A child that says nothing in time: the error names its process state and the end of
    its error output, so a run that failed that way says why (a wedged child, or one that
    never got the CPU), not only that it was silent."""
    code = "import sys, time; sys.stderr.write('still importing\\n'); sys.stderr.flush(); time.sleep(30)"
    child = Child([sys.executable, "-c", code])
    try:
        with pytest.raises(TimeoutError) as err:
            child.line(1.0)
        message = str(err.value)
        assert "no output in 1 s" in message
        assert "running, state S" in message and "still importing" in message, message
    finally:
        child.close()
