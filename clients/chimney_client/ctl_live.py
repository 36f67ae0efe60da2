"""The live views of chimneyctl: `watch ID` (a connection's hops as they happen) and `top`
(per-layer gauges and rates, and the busiest connections, refreshed in place)."""

from __future__ import annotations

import shutil
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from .blocking import Client
from .ctl_render import (
    HOP_COLUMNS,
    Output,
    call_totals,
    flow,
    hop_cells,
    stacked,
    table,
    table_width,
)
from .errors import NotFound

if TYPE_CHECKING:
    from .ctl import Session

# ================================================================================================
# watch
# ================================================================================================
#: The columns' widths when the terminal has room: seq, t (µs), layer, call, handle, context,
#: nbl, status; the event follows them.
_WIDTHS = (6, 11, 8, 38, 7, 8, 6, 28)
#: The longest event name (TcpIndicateSendBacklogChange): a terminal at least this wide past the
#: columns above gets the wide layout.
_EVENT_WIDTH = 28
#: The widths in a narrower terminal, one space apart: seq, t (µs), layer, handle ("hdl"),
#: context ("ctx") and nbl at what their values usually need (a longer value pushes the rest of
#: its line right); call takes what is left up to its longest name; status and event share the
#: last column (a hop carries one or the other), statuses without their NDIS_STATUS_ prefix,
#: cut to what remains of the line. A cell that must be cut ends with "…".
_NARROW = (4, 9, 5, 4, 4, 3)
_NARROW_HEADINGS = ("seq", "t (µs)", "layer", "call", "hdl", "ctx", "nbl", "status/event")
_CALL_LONGEST = 35  # NdisTcpOffloadReceiveHandler:return
_CALL_MIN = 16
_CALL_CUT = 8  # what a call name keeps when it gives its room to a status
_LAST_MIN = 16
_STATUS_PREFIX = "NDIS_STATUS_"
#: Narrower than this, a one-line row can no longer give the call _CALL_MIN and its status or
#: event _LAST_MIN (the call was cut to 8, "Protoco…", and a long status ran past the
#: terminal): each hop is stacked, seq, t, layer, handle, context and nbl on its first line,
#: the call and then its status or event under them, each whole.
WATCH_STACKED = sum(_NARROW) + len(_NARROW) + 1 + _CALL_MIN + _LAST_MIN
_STACK_INDENT = _NARROW[0] + 1  # a stacked hop's next lines start under its t


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


@dataclass(frozen=True)
class WatchLayout:
    """How `watch` lays out a row: in a terminal of `columns` each line fits its width; None
    (a pipe or a file) keeps every cell whole, for the scripts that read it."""

    columns: int | None

    @property
    def wide(self) -> bool:
        need = sum(_WIDTHS) + 2 * len(_WIDTHS) + _EVENT_WIDTH
        return self.columns is None or self.columns >= need

    @property
    def call_width(self) -> int:
        assert self.columns is not None
        fixed = sum(_NARROW) + len(_NARROW) + 1  # the columns and a space after each, and call's
        return max(_CALL_MIN, min(_CALL_LONGEST, self.columns - fixed - _LAST_MIN))

    @property
    def stacked(self) -> bool:
        return self.columns is not None and self.columns < WATCH_STACKED

    def row(self, cells: list[str]) -> str:
        """One line of `cells` (seq, t, layer, call, handle, context, nbl, status[, event]);
        two or three in a terminal narrower than WATCH_STACKED."""
        if self.wide:
            padded = [c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=False)]
            return "  ".join([*padded, *cells[len(_WIDTHS) :]]).rstrip()
        assert self.columns is not None
        cells = [*cells, *[""] * (8 - len(cells))]
        status = cells[7]
        if status.startswith(_STATUS_PREFIX) and status != _STATUS_PREFIX:
            cells[7] = status[len(_STATUS_PREFIX) :]
        last = " ".join(c for c in cells[7:] if c)
        if self.stacked:
            return self._stacked(cells, last)
        # the status is what a user reads a failed hop by: the call name gives up its room to
        # it first, down to _CALL_CUT; a line that still cannot hold it runs past the terminal
        # rather than cut it (an event after it may be cut)
        call = self.call_width
        line = self._line(cells, call)
        keep = len(cells[7]) + (3 if cells[7] and last != cells[7] else 0)  # "STATUS E…"
        over = len(line) + 1 + keep - self.columns
        if over > 0 and cells[7]:
            call = max(_CALL_CUT, call - over)
            line = self._line(cells, call)
        room = self.columns - len(line) - 1
        return f"{line} {_cut(last, max(room, keep, 1))}".rstrip()

    def _stacked(self, cells: list[str], last: str) -> str:
        """A hop over two lines, its status or event after the call when the line holds both,
        else on a third. In a pane narrower than the ids' line (34) handle, context and nbl
        go on a line of their own; a call, status or event longer than a line is folded over
        lines, never cut (spec'd names are what a user greps for)."""
        assert self.columns is not None
        indent = " " * _STACK_INDENT
        room = max(1, self.columns - _STACK_INDENT)
        head = " ".join(c.ljust(w) for c, w in zip(cells[:3], _NARROW[:3], strict=True))
        ids = " ".join(c.ljust(w) for c, w in zip(cells[4:7], _NARROW[3:], strict=True))
        if len(head) + 1 + len(ids.rstrip()) <= self.columns:
            lines = [f"{head} {ids}"]
        else:  # keep each id under its heading: the terminal would wrap them out of place
            lines = [head, indent + ids]
        call = textwrap.wrap(cells[3], room) or [""]
        if last and len(call[-1]) + 1 + len(last) <= room:
            call[-1] += f" {last}"
        elif last:
            call += textwrap.wrap(last, room)
        lines += [indent + line for line in call]
        return "\n".join(line.rstrip() for line in lines).rstrip()

    def _line(self, cells: list[str], call: int) -> str:
        """The cells before status and event, `call` wide for the call's name."""
        widths = (*_NARROW[:3], call, *_NARROW[3:])
        cut = [*cells[:3], _cut(cells[3], call), *cells[4:7]]
        return " ".join(c.ljust(w) for c, w in zip(cut, widths, strict=True))

    def heading(self) -> str:
        if self.wide:
            return self.row([*HOP_COLUMNS, "event"])
        if self.stacked:
            return self.row([*_NARROW_HEADINGS[:7], _NARROW_HEADINGS[7]])
        # the last heading goes where an event does: a label, cut to fit, which does not take
        # the call column's room as a status would
        return self.row([*_NARROW_HEADINGS[:7], "", _NARROW_HEADINGS[7]])


def terminal_columns(out: Output) -> int | None:
    """The terminal's width when `out` is one (shutil.get_terminal_size: $COLUMNS, else the
    terminal's own); None for a pipe or a file."""
    if not out.file.isatty():
        return None
    return shutil.get_terminal_size().columns


def _closed(client: Client, conn: int) -> bool:
    try:
        return client.tcp_info(conn).get("state") == "closed"
    except NotFound:
        return True  # gone; its trace stays readable for a while (contract: trace.get)


def watch(s: Session, conn: int, interval: float, new_only: bool) -> dict[str, Any]:
    """Print the hops of `conn` with a seq above the last seen, every `interval`, until the
    connection is closed and its last hops are printed."""
    client = s.client
    hops = client.trace_get(conn)
    t0 = hops[0].get("t_ns") if hops else None
    last = max((h.get("seq", 0) for h in hops), default=0) if new_only else 0
    layout = WatchLayout(terminal_columns(s.out))
    s.out.line(layout.heading())
    printed = 0
    while True:
        closed = _closed(client, conn)  # before the read: the hops up to the close are in it
        hops = client.trace_get(conn)
        if t0 is None and hops:
            t0 = hops[0].get("t_ns")
        new = [h for h in hops if isinstance(h.get("seq"), int) and h["seq"] > last]
        if new and last and new[0]["seq"] > last + 1:
            s.out.line(f"… {new[0]['seq'] - last - 1} hops not shown (the trace buffer wrapped)")
        for hop in new:
            if s.out.json_mode:
                s.out.json({"hop": hop, "conn": conn})
            else:
                s.out.line(layout.row(hop_cells(hop, t0, True)))
            last = hop["seq"]
            printed += 1
        if closed:
            s.out.line(f"conn {conn}: closed")
            return {"conn": conn, "hops": printed, "closed": True}
        time.sleep(interval)


# ================================================================================================
# top
# ================================================================================================
@dataclass
class ConnSampler:
    """The busiest connections by bytes, with at most `n` tcp.info calls per refresh: the known
    top half is refreshed every time, the rest of the budget walks over the others (unknown
    ones first), so a connection that gets busy is found within a few refreshes."""

    n: int
    known: dict[int, dict[str, Any]] = field(default_factory=dict)
    cursor: int = 0
    visible: int = 0

    def refresh(self, client: Client, now: float) -> list[dict[str, Any]]:
        ids = client.tcp_list()
        self.visible = len(ids)
        live = set(ids)
        for gone in [c for c in self.known if c not in live]:
            del self.known[gone]
        if self.n <= 0:
            return []
        ranked = sorted(self.known, key=lambda c: -self.known[c]["total"])
        picks = ranked[: (self.n + 1) // 2]
        others = [c for c in ids if c not in picks]
        unknown = [c for c in others if c not in self.known]
        rest = [c for c in others if c in self.known]
        if rest:
            self.cursor %= len(rest)
            rest = rest[self.cursor :] + rest[: self.cursor]
        room = self.n - len(picks)
        extra = (unknown + rest)[:room]
        self.cursor += max(0, len(extra) - len(unknown))
        for conn in picks + extra:
            self._info(client, conn, now)
        top = sorted(self.known.values(), key=lambda r: -r["total"])
        return top[: self.n]

    def _info(self, client: Client, conn: int, now: float) -> None:
        try:
            info = client.tcp_info(conn)
        except NotFound:
            self.known.pop(conn, None)
            return
        sent, received = info.get("bytes_sent") or 0, info.get("bytes_received") or 0
        total = sent + received
        before = self.known.get(conn)
        rate = None
        if before is not None and now > before["t"]:
            rate = (total - before["total"]) / (now - before["t"])
        self.known[conn] = {
            "conn": conn,
            "state": info.get("state"),
            "remote": info.get("remote"),
            "path": info.get("path"),
            "bytes_sent": sent,
            "bytes_received": received,
            "total": total,
            "bytes_per_s": rate,
            "t": now,
        }


def _rate(now: Mapping[str, Any], before: Mapping[str, Any] | None, key: str, dt: float) -> Any:
    if before is None or dt <= 0:
        return None
    a, b = now.get(key), before.get(key)
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return None
    return (a - b) / dt


def layer_rows(
    stats: Mapping[str, Any], before: Mapping[str, Any] | None, dt: float
) -> list[dict[str, Any]]:
    """Per layer: gauges, inbox depth (engine.inbox), bytes, calls, failures and rates."""
    inbox = (stats.get("engine") or {}).get("inbox") or {}
    old_layers = (before or {}).get("layers") or {}
    rows = []
    for name, m in (stats.get("layers") or {}).items():
        calls, failed = call_totals(m)
        row: dict[str, Any] = {
            "layer": name,
            **{k: m.get(k) for k in ("offloads_active", "handles", "outstanding_nbls")},
            "inbox": inbox.get(name),
            "bytes_sent": m.get("bytes_sent"),
            "bytes_received": m.get("bytes_received"),
            "calls": calls,
            "failed": failed,
        }
        old = old_layers.get(name)
        old_row = None if old is None else {**old, "calls": call_totals(old)[0]}
        for key in ("bytes_sent", "bytes_received", "calls"):
            row[f"{key}_per_s"] = _rate(row, old_row, key, dt)
        rows.append(row)
    return rows


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)  # pragma: no cover


#: what `top` says for the invariant checker when the daemon runs without it
INVARIANTS_OFF = "off (start chimneyd with --invariants)"


def _invariants(frame: Mapping[str, Any]) -> str:
    """The violations the checker counted, or that it is off: a bare "-" read as a fault of
    the view, not as a checker nobody turned on."""
    if frame.get("invariant_checker") is False:
        return INVARIANTS_OFF
    return _num(frame.get("invariant_violations"))


#: Below this many columns `top` shows the compact tables: the per-layer table of some 135
#: columns lost its layer names and headings to rich's shrinking in an 80-column terminal.
TOP_WIDE = 140

#: The layers' fields when stacked, most read first, so the first line of each layer holds
#: them: how much is offloaded, its throughput and failures; then back-pressure (inbox, NBLs
#: outstanding); calls/s, which follows the byte rates; handles last, about a fixed multiple of
#: the offloads (one per offloaded connection per layer).
_STACKED_LAYERS = ("offloads", "sent/s", "recv/s", "failed", "inbox", "nbls", "calls/s", "handles")


def _stacked(lines: list[str]) -> Text:
    """Lines of `ctl_render.stacked`, the headings bold as a table's are."""
    # folded, not cropped: a name longer than the terminal (the only line that can be) is
    # shown whole over lines, as the terminal itself would
    text = Text(overflow="fold")
    heading = True
    for i, line in enumerate(lines):
        heading = heading and not line.startswith("─")
        text.append(("\n" if i else "") + line, style="bold" if heading else "")
    return text


def render(
    frame: Mapping[str, Any], width: int | None = None, *, compact: bool = False
) -> RenderableType:
    """One frame of `top`; `width` the terminal's (None: no limit). Narrower than TOP_WIDE, or
    than the full tables (large numbers, long names), or when `compact`, the layers show their
    rates but not their byte totals, under short headings; a table that still does not fit is
    stacked (`ctl_render.stacked`: each row over as many lines as it needs), so no cell is cut
    at any width."""
    compact = compact or (width is not None and width < TOP_WIDE)
    items = [
        f"chimneyd {frame['rpc']}",
        f"connections {_num(frame.get('connections'))}",
        f"rpc clients {_num(frame.get('rpc_clients'))} in flight {_num(frame.get('in_flight'))}",
        f"tasks {_num(frame.get('tasks'))}",
        f"invariant violations {_invariants(frame)}",
        f"every {frame['interval']:g} s",
    ]
    # a terminal's width: the heading breaks between its items, not inside one
    head = Text("\n".join(flow(items, width)) if width else " · ".join(items), style="bold")
    layers: RenderableType
    if compact:
        headings = ["layer", "offloads", "handles", "nbls", "inbox", "sent/s", "recv/s"]
        layers = table(*headings, "calls/s", "failed")
    else:
        layers = table(
            "layer",
            "offloads_active",
            "handles",
            "outstanding_nbls",
            "inbox",
            "bytes_sent",
            "sent/s",
            "bytes_received",
            "recv/s",
            "calls",
            "calls/s",
            "failed",
        )
    layer_cells: list[dict[str, str]] = []
    for r in frame["layers"]:
        cells = {
            "layer": str(r["layer"]),
            "offloads": _num(r["offloads_active"]),
            "handles": _num(r["handles"]),
            "nbls": _num(r["outstanding_nbls"]),
            "inbox": _num(r["inbox"]),
            "sent/s": _bytes(r["bytes_sent_per_s"]),
            "recv/s": _bytes(r["bytes_received_per_s"]),
            "calls/s": _num(r["calls_per_s"]),
            "failed": _num(r["failed"]),
        }
        layer_cells.append(cells)
        if compact:
            layers.add_row(*(cells[str(c.header)] for c in layers.columns))
            continue
        layers.add_row(
            cells["layer"],
            cells["offloads"],
            cells["handles"],
            cells["nbls"],
            cells["inbox"],
            _bytes(r["bytes_sent"]),
            cells["sent/s"],
            _bytes(r["bytes_received"]),
            cells["recv/s"],
            _num(r["calls"]),
            cells["calls/s"],
            cells["failed"],
        )
    if compact:
        conns = table("conn", "state", "remote", "sent", "recv", "bytes/s", "path")
    else:
        conns = table("conn", "state", "remote", "path", "bytes_sent", "bytes_received", "bytes/s")
    rows = []
    for c in frame["conns"]:
        path = " → ".join(map(str, c["path"] or []))
        sizes = [_bytes(c["bytes_sent"]), _bytes(c["bytes_received"]), _bytes(c["bytes_per_s"])]
        ident = [str(c["conn"]), str(c["state"]), str(c["remote"])]
        rows.append([*ident, *sizes, path] if compact else [*ident, path, *sizes])
    for row in rows:
        conns.add_row(*row)
    # rich shrinks every column of a table too wide for the terminal, the one naming the row
    # too, and cuts cells: a compact table that does not fit whole is stacked instead
    conns_shown: RenderableType = conns
    if compact:  # one space of padding between columns, not two
        layers.collapse_padding = conns.collapse_padding = True
        assert width is not None
        if table_width(layers) > width:
            heads = ("layer", *_STACKED_LAYERS)
            layers = _stacked(stacked(heads, [[c[h] for h in heads] for c in layer_cells], width))
        if rows and table_width(conns) > width:
            conns_shown = _stacked(stacked([str(c.header) for c in conns.columns], rows, width))
    elif width is not None and max(table_width(layers), table_width(conns)) > width:
        # the full tables at TOP_WIDE or wider can still be too wide (a busy stack's: 144 at
        # 140), where rich cut "bytes_sent" and "failed": the compact ones instead
        return render(frame, width, compact=True)
    else:
        layers.columns[0].min_width = max([5, *(len(str(r["layer"])) for r in frame["layers"])])
        conns.columns[0].min_width = max([4, *(len(row[0]) for row in rows)])
    parts: list[RenderableType] = [head, Text(""), layers, Text("")]
    title = f"busiest connections (by bytes; {frame['conns_visible']} visible)"
    parts.append(Text(title, style="bold"))
    parts.append(conns_shown if frame["conns"] else Text("(none)"))
    if frame.get("note"):
        parts.append(Text(frame["note"], style="dim"))
    return Group(*parts)


ADMIN_NOTE = (
    "only this client's connections are visible: give the admin token (--token or "
    "CHIMNEY_TOKEN) to see every connection"
)


@dataclass
class Top:
    client: Client
    address: str
    interval: float
    sampler: ConnSampler
    admin: bool
    before: dict[str, Any] | None = None
    t_before: float = 0.0

    def frame(self) -> dict[str, Any]:
        now = time.monotonic()
        stats = self.client.stack_stats()
        conns = self.sampler.refresh(self.client, now)
        dt = now - self.t_before
        rpc = stats.get("rpc") or {}
        engine = stats.get("engine") or {}
        frame = {
            "rpc": self.address,
            "interval": self.interval,
            "connections": stats.get("connections"),
            "rpc_clients": rpc.get("clients"),
            "in_flight": rpc.get("in_flight"),
            "tasks": stats.get("tasks"),
            "invariant_violations": engine.get("invariant_violations"),
            # the daemon says null while its checker is off; a daemon without the key says
            # nothing about it (None: unknown)
            "invariant_checker": (
                engine["invariant_violations"] is not None
                if "invariant_violations" in engine
                else None
            ),
            "layers": layer_rows(stats, self.before, dt),
            "conns": [{k: v for k, v in c.items() if k not in ("t", "total")} for c in conns],
            "conns_visible": self.sampler.visible,
            "note": None if self.admin else ADMIN_NOTE,
        }
        self.before, self.t_before = stats, now
        return frame


def top(s: Session, interval: float, n: int, once: bool) -> Any:
    from .ctl import admin_hint

    view = Top(s.client, s.args.rpc, interval, ConnSampler(n), admin=admin_hint(s) is None)
    view.frame()  # the first sample: rates need two
    if once or s.out.json_mode or not s.out.file.isatty():
        while True:  # frames one after the other, for a pipe or a script
            time.sleep(interval)
            frame = view.frame()
            if s.out.json_mode and not once:
                s.out.json(frame)
            else:
                s.out.table(render(frame, terminal_columns(s.out)))
            if once:
                return frame
    from rich.live import Live

    console = Console()
    with Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(view.frame(), console.width), refresh=True)
