"""docs/configuration.md's *range* column against `chimneyd.config.LIMITS`: every numeric key
shows its real range, every other key none."""

from __future__ import annotations

import re

from chimneyd.config import LIMITS, SHARDS_PER_CPU
from tests.docs.mdcheck import DOCS

CONFIG_MD = DOCS / "configuration.md"


def documented_ranges() -> dict[str, str]:
    """`section.key` → the range cell (the one after the default) as written."""
    rows = re.findall(
        r"^\| `([a-z_]+\.[a-z0-9_]+)` \| [^|]+? \| ([^|]+?) \|", CONFIG_MD.read_text(), re.M
    )
    return dict(rows)


def shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_each_numeric_key_shows_its_range() -> None:
    cells = documented_ranges()
    for key, (low, high) in LIMITS.items():
        want = (
            f"1 to {SHARDS_PER_CPU} per CPU"  # then the machine's own bound (_check_daemon)
            if key == "daemon.shards"
            else f"{shown(low)} to {shown(high)}"
        )
        assert cells.get(key) == want, f"{key}: page {cells.get(key)!r}, code {want!r}"
    for key, cell in cells.items():
        if key not in LIMITS:
            assert cell == "—", f"{key} has no range: write —, not {cell!r}"
