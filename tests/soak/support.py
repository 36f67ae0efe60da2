"""What the soak tests share."""

from __future__ import annotations

import os
from pathlib import Path


def soak_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a soak a test starts: its TMPDIR under the test's `tmp_path`. A soak
    that fails (most of the mutants do, and an interrupted one) keeps its spawned processes'
    output in a temporary directory and names it; under `tmp_path` pytest clears it with the
    rest, where in /tmp every run of the suite would leave a dozen behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(scratch)}
