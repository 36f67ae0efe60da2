"""A pytest plugin that makes its process import chimneyd from the `.py` sources, also where a
compiled build (`make compiled`) put extension modules beside them.

Loaded first (`-p tests.docs.source_only`), before anything imports chimneyd. The NDIS surface
probe (surface_probe.py) wraps functions where they are defined, which compiled callers never
see, since they bind their callees at build time. What the probe measures, which tests run
which code, belongs to the sources and the tests and is the same on every build, so on the
compiled build test_ndis_surface runs its probe on the sources with this plugin.
"""

from __future__ import annotations

import importlib.machinery as machinery
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])


def _source_only_hook(root: str) -> Callable[[str], machinery.FileFinder]:
    """A path hook finding only `.py` modules in `root` and below (other paths: the next
    hook's)."""
    sources = machinery.FileFinder.path_hook(
        (machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES)
    )

    def hook(path: str) -> machinery.FileFinder:
        where = os.path.abspath(path or os.getcwd())
        if where != root and not where.startswith(root + os.sep):
            raise ImportError(f"{where} is not under {root}")
        return sources(path)

    return hook


if "chimneyd" in sys.modules:  # too late: the plugin must come before any import of it
    raise RuntimeError("tests.docs.source_only loaded after chimneyd was imported")
sys.path_hooks.insert(0, _source_only_hook(ROOT))
sys.path_importer_cache.clear()
