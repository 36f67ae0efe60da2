"""Running `python -m bench` from the bench's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what may keep a section from running on a test machine; anything else must run or fail
ALLOWED_SKIPS = {"nofile", "no-proc"}


def run_bench(*args: str, timeout: float = 200.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout[-4000:] + proc.stderr[-4000:]
