"""The installed chimneyd distribution's version, which every tool's `--version` prints."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("chimneyd")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a plain checkout
        return "unknown"
