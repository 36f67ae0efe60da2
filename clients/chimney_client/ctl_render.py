"""What chimneyctl prints: the output sink (people or JSON Lines), table cells, hop rows, and the
rule that says which counted calls failed. Shared by the one-shot commands, `watch` and `top`."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table


def json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return repr(value)


def fmt(value: Any) -> str:
    """A compact, stable rendering of a value in a table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Rich would exit 1 here; chimneyctl decides what a closed stdout means (ctl.main:
        exit 141, after a run clears its faults), so it gets the error as any write raises it."""
        self.quiet = True  # what is still printed goes nowhere
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


@dataclass
class Output:
    """Where results go. People get lines and tables; in JSON mode `line`, `table` and `raw` print
    nothing and the caller emits one JSON object per command or event with `json`."""

    json_mode: bool
    file: IO[str]
    console: Console = field(init=False)

    def __post_init__(self) -> None:
        tty = self.file.isatty()
        # no markup: cells are data, and "[object]" or "MiniportInitiateOffload[path]" are
        # text to show, not style tags for rich to swallow
        self.console = _Console(
            file=self.file,
            highlight=False,
            markup=False,
            width=None if tty else 160,
            soft_wrap=not tty,
        )

    def json(self, value: Any) -> None:
        self.file.write(json.dumps(value, default=json_default, ensure_ascii=False) + "\n")
        self.file.flush()

    def line(self, text: str) -> None:
        if not self.json_mode:
            self.console.print(text, markup=False)

    def table(self, table: RenderableType) -> None:
        if self.json_mode:
            return
        if isinstance(table, Table) and table.columns and self.file.isatty():
            # a terminal narrower than the table: rich shrinks every column, the one that names
            # each row too ("tc…" for tcpip); that one is kept whole, and the padding halved
            first = table.columns[0]
            first.min_width = max(len(str(c)) for c in [first.header, *first.cells])
            if table_width(table) > self.console.width:
                table.collapse_padding = True
        # Rendered, then right-stripped: rich pads cells, and trailing blanks spoil copy-paste.
        self.file.write(render_text(self.console, table) + "\n")
        self.file.flush()

    def raw(self, data: bytes) -> None:
        if self.json_mode:
            return
        self.file.flush()
        buffer = getattr(self.file, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stream (tests): keep bytes visible rather than lose them
            self.file.write(data.decode("utf-8", "backslashreplace"))


def render_text(console: Console, renderable: RenderableType) -> str:
    with console.capture() as cap:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in cap.get().splitlines())


def table_width(renderable: RenderableType) -> int:
    """The columns `renderable` takes when nothing limits it."""
    console = Console(width=100_000, file=io.StringIO(), markup=False, highlight=False)
    return max((len(line) for line in render_text(console, renderable).splitlines()), default=0)


def table(*columns: str, title: str | None = None) -> Table:
    t = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, pad_edge=False
    )
    for c in columns:
        t.add_column(c, no_wrap=True)
    return t


# -- hops (trace.get maps) ------------------------------------------------------------------------
HOP_COLUMNS = ("seq", "t (µs)", "layer", "call", "handle", "context", "nbl", "status")


def hop_cells(hop: Mapping[str, Any], t0: int | None, with_event: bool) -> list[str]:
    """One trace row: seq, time since `t0` in µs, then the contract's hop keys (and the event)."""
    tn = hop.get("t_ns")
    rel = f"{(tn - t0) / 1000:.1f}" if isinstance(tn, int) and isinstance(t0, int) else ""
    row = [fmt(hop.get("seq")), rel, *(fmt(hop.get(k)) for k in HOP_COLUMNS[2:])]
    if with_event:
        row.append(fmt(hop.get("event")))
    return row


# -- counters ------------------------------------------------------------------------------------
#: An initiate's block completed with this status was offloaded, its dependents partly not
#: (spec §3.2.4): the initiate did its work. By name and by value (0x40020004, spec §6.1).
_OFFLOADED_PARTLY = ("NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS", "0x40020004")
#: Counters whose suffix is an adapter's status indication, not the status a call ended with.
_INDICATIONS = ("NdisMIndicateStatusEx",)


def is_failure(key: str) -> bool:
    """Does a `stack.stats` call counter count failures? Keys are `Call` or `Call/SUFFIX`; the
    suffix is the status the call (an I/O completion) ended with, or an indication's event or
    adapter status (`NdisTcpOffloadEventHandler/TcpIndicateDisconnect`,
    `NdisMIndicateStatusEx/...`).

    A call counted with a status other than NDIS_STATUS_SUCCESS failed, whatever the status's
    severity: the host fails the request on any other status (a send completed with the
    informational NDIS_STATUS_OFFLOAD_STATE_INVALID acknowledged nothing, and `tcp.send`
    answers its error). The one exception is an initiate's PARTIAL_SUCCESS (spec §3.2.4: the
    block was offloaded). Events, status indications (PAUSE, UPLOAD_ALL, RESUME: an adapter's
    news, no call's result) and calls counted without a status are not failures.
    `chimneyd.observe.metrics.is_failure` is the same rule (the web view's `failures`,
    `chimney_call_failures_total`); tests/observe/test_failure_rule.py holds the two to it."""
    call, sep, status = key.partition("/")
    if not sep or call in _INDICATIONS:
        return False
    if status.startswith("0x"):  # a status with no name: by its value
        try:
            value = int(status, 16)
        except ValueError:
            return False
        status = f"0x{value:08X}"
        if value == 0:
            return False
    elif not status.startswith("NDIS_STATUS_") or status == "NDIS_STATUS_SUCCESS":
        return False
    return not ("InitiateOffloadComplete" in call and status in _OFFLOADED_PARTLY)


def call_totals(layer: Mapping[str, Any]) -> tuple[int, int]:
    """(calls, failed) of one layer's `calls` counters."""
    calls = layer.get("calls")
    if not isinstance(calls, dict):
        return 0, 0
    counts = [(k, v) for k, v in calls.items() if isinstance(v, int)]
    return sum(v for _, v in counts), sum(v for k, v in counts if is_failure(str(k)))


def unsent_acks_cell(layer: Mapping[str, Any]) -> str:
    """A target's `unsent_acks` that are not 0, `kind=n` in the order it reports them: the ACKs
    it would answer forwarded segments with and cannot put on the kernel's socket
    (docs/metrics.md, spec §5.2). Not NDIS calls, so not in `call_totals`. "" for a layer that
    reports none, or only zeros."""
    unsent = layer.get("unsent_acks")
    if not isinstance(unsent, dict):
        return ""
    return " ".join(f"{k}={v}" for k, v in unsent.items() if isinstance(v, int) and v)


# -- stacked tables (a terminal narrower than a table) -------------------------------------------
#: the fewest columns a stacked row's fields get beside its name; fewer, they go under it
STACKED_MIN_ROOM = 10


def stacked(headings: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """A table in `width` columns with no cell cut: the first column names each row; the others
    follow it in their order, each row over as many lines as they need, every field in the same
    line and column as its heading's, so the first line holds the first (most read) fields. A
    field wider than its line's room has a line of its own, folded at its spaces. Lines: the
    headings, a rule, then the rows. A name so long that fewer than STACKED_MIN_ROOM columns
    are left beside it has a line of its own, its fields under it, indented by two."""
    key = max(len(headings[0]), *(len(r[0]) for r in rows)) if rows else len(headings[0])
    # a 19-digit connection id at 20 columns left no room at all: every field was cropped
    own_line = width - key - 2 < STACKED_MIN_ROOM
    indent = 2 if own_line else key + 2
    room = max(1, width - indent)
    # no rows (a stack with no layers): the headings alone set the widths
    widths = [max([len(headings[i]), *(len(r[i]) for r in rows)]) for i in range(1, len(headings))]
    # which fields share a line: greedily, in their order
    groups: list[list[int]] = []
    used = room + 1
    for i, w in enumerate(widths, start=1):
        if groups and used + 2 + w <= room:
            groups[-1].append(i)
            used += 2 + w
        else:
            groups.append([i])
            used = w

    def block(cells: Sequence[str]) -> list[str]:
        out: list[str] = [cells[0]] if own_line else []
        for n, group in enumerate(groups):
            lead = " " * indent if own_line else (cells[0] if n == 0 else "").ljust(key) + "  "
            if len(group) == 1 and widths[group[0] - 1] > room:  # alone and still too wide
                folded = textwrap.wrap(cells[group[0]], room, break_on_hyphens=False) or [""]
                out += [(lead if k == 0 else " " * indent) + f for k, f in enumerate(folded)]
                continue
            line = "  ".join(cells[i].ljust(widths[i - 1]) for i in group)
            out.append(lead + line)
        return [line.rstrip() for line in out]

    head = block(headings)
    rule = "─" * min(width, max(len(line) for line in head))
    return [*head, rule, *(line for r in rows for line in block(r))]


def flow(items: Sequence[str], width: int, sep: str = " · ") -> list[str]:
    """`items` joined by `sep` in lines of at most `width` columns, each item whole on one line
    (an item longer than `width` alone on its)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(sep) + len(item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines
