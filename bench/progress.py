"""Progress for humans: one line per section, naming the step that runs and the repeats done.

On a terminal it is a live rich progress display (each finished section stays as a line with its
time); elsewhere (CI logs, pytest) each step is one plain line, so a log shows where a run was.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter:
    """`with Reporter(console) as r:` around the run; sections call `begin`, `step`, `done`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold cyan]{task.fields[section]:<8}[/]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            # a slow refresh: the display thread must not weigh on what is being measured
            refresh_per_second=2,
            disable=not self.live,
        )
        self.task: TaskID | None = None
        self.section = ""
        self.t0 = 0.0

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def begin(self, section: str, total: int, what: str) -> None:
        """A section starts, or says how many steps (repeats of its measurements) are to come."""
        if self.task is not None and self.section == section:
            self.progress.update(self.task, total=max(1, total))
            self.step(what)
            return
        self.section = section
        self.t0 = time.perf_counter()
        self.task = self.progress.add_task(what, total=max(1, total), section=section)
        if not self.live:
            self.console.print(f"[bold cyan]{section}[/]: {what}", highlight=False)

    def step(self, label: str, advance: int = 0) -> None:
        """What runs now; `advance` steps were completed just before it."""
        if self.task is None:
            return
        self.progress.update(self.task, description=label, advance=advance)
        if not self.live:
            task = self.progress.tasks[self.task]
            self.console.print(
                f"  [dim]{self.section} {task.completed:.0f}/{task.total:.0f}:[/] {label}",
                highlight=False,
            )

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def done(self, status: str) -> None:
        if self.task is None:
            return
        elapsed = time.perf_counter() - self.t0
        task = self.progress.tasks[self.task]
        self.progress.update(
            self.task, completed=task.total, description=f"{status} in {elapsed:.1f} s"
        )
        if not self.live:
            self.console.print(
                f"[bold cyan]{self.section}[/]: {status} in {elapsed:.1f} s", highlight=False
            )
        self.task = None
