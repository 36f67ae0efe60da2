"""One version, said in three places: pyproject's `version` (what `--version` of every tool
prints, through the installed metadata: chimney_client.version), `chimneyd.__version__`
(`stack.info`'s `version`, `chimneyd --version`) and CHANGELOG.md's newest heading below
Unreleased. Nothing has been released (CHANGELOG.md's preamble): until a release, the work
under Unreleased is still that version's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import chimneyd

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_the_package_and_the_changelog_agree() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings[0] == "Unreleased", headings[:2]
    assert chimneyd.__version__ == declared, (chimneyd.__version__, declared)
    assert headings[1] == declared, (
        f"CHANGELOG.md's newest version heading is {headings[1]}, pyproject declares {declared}"
    )
