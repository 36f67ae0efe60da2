"""Which build the tests run on. `make test-compiled` puts the compiled copy of chimneyd first
on the path and sets CHIMNEYD_EXPECT_BUILD=compiled; these fail if the modules the tests import
are not the build asked for (a stale path, a module left out of the build), in either run."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from chimneyd.compiled import build_name, is_compiled

LISTED = Path(__file__).parents[2] / "deploy" / "compiled-modules.txt"


def _expected() -> str:
    return os.environ.get("CHIMNEYD_EXPECT_BUILD", "python")


def test_the_build_under_test_is_the_one_asked_for() -> None:
    assert build_name() == _expected()
    assert is_compiled() is (_expected() == "compiled")


def test_every_listed_module_is_of_that_build() -> None:
    lines = [ln.strip() for ln in LISTED.read_text().splitlines()]
    paths = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(paths) > 30
    for path in paths:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        source = (module.__file__ or "").endswith(".py")
        assert source is (_expected() == "python"), (path, module.__file__)
