"""The tables for humans: every figure with its spread, target and verdict; the targets."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import Figure, Section
from bench.judge import MAX_FALSE_CALL, MIN_REPEATS_TO_JUDGE, Verdict, fails_strict
from bench.targets import TARGETS

VERDICT_STYLE = {
    Verdict.MET: "[green]✓ met[/]",
    Verdict.MISSED: "[red]✗ missed[/]",
    Verdict.NOISE: "[yellow]~ within noise[/]",
    Verdict.SAME: "[dim]≈ 1x, within noise[/]",
    Verdict.REPORTED: "",
    Verdict.FEW: "[dim]too few repeats[/]",
    Verdict.FAILED: "[bold red]FAILED[/]",
    Verdict.INVALID: "[bold red]✗ invalid measurement[/]",
}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _ratio(f: Figure) -> tuple[str, str]:
    s = f.spread
    spread = f"{s.low:.2f}-{s.high:.2f}"
    if (s.lowest, s.highest) != (s.low, s.high):
        # the runs left out of the judged spread stay in sight: a reader sees the stray run
        spread += f" [dim](all {s.lowest:.2f}-{s.highest:.2f})[/]"
    return f"{s.median:.2f}x", spread


def _allocator(meta: dict[str, Any]) -> str:
    """The daemons' allocator: the PYTHONMALLOC this run gave them, or chimneyd's default."""
    return (meta.get("malloc_env") or {}).get("PYTHONMALLOC") or "malloc"


def figures_table(sections: list[Section], meta: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"chimneyd bench: {meta['mode']}, {meta['cpus']} CPUs, Python {meta['python']}, "
            f"{meta.get('build', 'python')} build, daemon on {_allocator(meta)}"
        ),
        caption="ratio = value / baseline of each interleaved repeat; the figure is their median, "
        "the spread a confidence interval for it (the middle runs: as many left off each end as "
        f"keep a figure on its target from being called met or missed more than "
        f"{MAX_FALSE_CALL:.2%} of the time by chance, one of 7; all runs' range beside it); "
        f"fewer than {MIN_REPEATS_TO_JUDGE} repeats are not judged; value and baseline are "
        "medians too",
    )
    table.add_column("figure  [dim](baseline)[/]", max_width=48)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("baseline", justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", style="bold", no_wrap=True)
    table.add_column("spread", justify="right", no_wrap=True)
    table.add_column("target", justify="center", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("note", style="dim", max_width=52)
    for sec in sections:
        repeats = sorted({f.spread.n for f in sec.figures})
        times = f"{'/'.join(map(str, repeats))} repeats, " if repeats else ""
        table.add_row(f"[bold cyan]{sec.name}[/]  [dim]{times}{sec.seconds:.1f} s[/]")
        if sec.skipped is not None:
            table.add_row(f"[yellow]skipped:[/] {sec.skipped}")
        if sec.failed is not None:
            table.add_row(f"[bold red]FAILED:[/] {sec.failed}")
        for f in sec.figures:
            ratio, spread = _ratio(f)
            name = f"{f.name}\n[dim]({f.baseline_name})[/]" if f.baseline_name else f.name
            note = f"[red]{f.failed}[/]" if f.failed else f.note
            table.add_row(
                name,
                fmt(f.value, f.unit),
                fmt(f.baseline, f.unit),
                ratio,
                spread,
                f.target.label(),
                VERDICT_STYLE[f.verdict],
                note,
            )
        table.add_section()
    return table


def summary(sections: list[Section]) -> str:
    counts = Counter(f.verdict for s in sections for f in s.figures)
    parts = [f"{counts[v]} {v.value}" for v in Verdict if counts[v]]
    # the figures --strict fails on, in one number: an invalid measurement is one of them, and a
    # target judged on too few repeats
    not_met = sum(fails_strict(f.verdict, f.target) for s in sections for f in s.figures)
    tail = f"; {not_met} not met" if not_met else ""
    return "figures: " + (", ".join(parts) or "none") + tail


def targets_table() -> Table:
    table = Table(title="bench targets (bench/targets.py): ratio = emulated / baseline")
    table.add_column("figure key")
    table.add_column("target", justify="center")
    table.add_column("from")
    for key, t in TARGETS.items():
        table.add_row(key, t.label(), t.source)
    return table


def render(console: Console, sections: list[Section], meta: dict[str, Any]) -> None:
    console.print(figures_table(sections, meta))
    for sec in sections:
        for note in sec.notes:
            console.print(f"[bold]{sec.name}[/]: {note}", highlight=False)
    console.print(summary(sections), highlight=False)
