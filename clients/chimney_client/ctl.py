"""`chimneyctl`: one sub-command per RPC contract method, tables for people, `--json` for scripts.

Connections belong to the RPC client that opened them: the daemon closes them when that client
goes away. A one-shot `chimneyctl connect ...` therefore ends its connection as it exits, so
`run` (commands as arguments) and `shell` (commands from stdin) execute many commands over one
RPC connection.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from rich import box
from rich.console import Console
from rich.table import Table

from .blocking import Client
from .errors import ChimneyError
from .protocol import DEFAULT_ADDRESS, Notification

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Default server-side wait of `recv` and `accept`, so a CLI never hangs on a silent peer.
DEFAULT_WAIT_MS = 5000
#: Client-side limit for one call (seconds); calls that wait server-side get their wait on top.
DEFAULT_CALL_TIMEOUT = 60.0

DESCRIPTION = """\
Drive a chimneyd daemon over its msgpack-RPC port (contract v1).

Connections belong to the RPC connection that opened them: the daemon closes them when that
client goes away, so a one-shot `chimneyctl connect` is closed again as chimneyctl exits. To work
with a connection, run several commands over one RPC connection:

  chimneyctl run 'connect 127.0.0.1 9000' 'send 1 hello' 'recv 1 100' 'trace 1' 'close 1'
  printf 'connect 127.0.0.1 9000\\nsend 1 hello\\n' | chimneyctl shell

`run` checks every command's syntax first, then runs them in order and stops at the first error.
`shell` reads one command per line (blank lines and # comments are skipped), keeps going after
an error and exits with the worst status of its lines. In both, events of a `subscribe` are printed as they
arrive, after the command during which they came in; `subscribe ... --count N` and
`events --count N` wait for N of them. `sleep SECONDS` pauses between commands.
"""

EPILOG = """\
output:
  Human output is tables and short lines. With --json each command prints its raw result as one
  JSON document per line (JSON Lines in run/shell); binary data (recv) is {"base64": "..."};
  events are {"event": NAME, "conn": ID, "info": {...}}. Errors go to stderr as
  "error: SYMBOL: message" (e.g. "error: NOT_FOUND: no connection 17").

exit status: 0 ok, 1 an RPC or connection error, 2 a usage error, 130 interrupted.
environment: CHIMNEY_RPC (default for --rpc), CHIMNEY_TOKEN (default for --token).
"""


class UsageError(Exception):
    """A command line that does not parse; exit status 2."""


class _HelpShown(Exception):
    """argparse printed help (or similar) and wanted to exit with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so `run`/`shell` lines can fail alone."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _HelpShown(status)


# ================================================================================================
# argument types
# ================================================================================================
def _conn_or_star(value: str) -> int | str:
    if value == "*":
        return "*"
    return _positive_int(value)


def _positive_int(value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an id (positive int), got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value!r}")
    return n


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port {value!r}") from None
    if not 0 <= n < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return n


def parse_value(text: str) -> Any:
    """`key=value` values of `fault inject`: int, float, true/false/null, JSON, else the str."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in '[{"':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, parse_value(value)


# ================================================================================================
# parsers
# ================================================================================================
def _add_commands(sub: Any, *, session: bool) -> None:
    """Every contract command; the same table serves the command line and run/shell lines."""

    def cmd(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kw)
        return p

    cmd("ping", "check the daemon answers (ping)")
    p = cmd("info", "stack layers (stack.info), or one connection with ID (tcp.info)")
    p.add_argument("id", nargs="?", type=_positive_int, help="connection id")
    cmd("stats", "per-layer gauges and counters (stack.stats)")
    p = cmd("connect", "open a connection to a loopback peer (tcp.connect)")
    p.add_argument("host")
    p.add_argument("port", type=_port)
    p.add_argument("--no-offload", dest="offload", action="store_false", help="stay in host mode")
    p.add_argument("--target", metavar="NIC", help="pin the offload target layer")
    p = cmd("listen", "listen for connections (tcp.listen); port 0 picks one")
    p.add_argument("host")
    p.add_argument("port", type=_port)
    p.add_argument("--no-offload", dest="offload", action="store_false", help="do not offload")
    p = cmd("listener-info", "a listener's address and pending count (tcp.listener_info)")
    p.add_argument("id", type=_positive_int, help="listener id")
    p = cmd("accept", "take the next accepted connection (tcp.accept)")
    p.add_argument("id", type=_positive_int, help="listener id")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_WAIT_MS, metavar="MS")
    p = cmd("offload", "offload a connection to its target (tcp.offload)")
    p.add_argument("id", type=_positive_int)
    p = cmd("upload", "terminate the offload, back to the host stack (tcp.upload)")
    p.add_argument("id", type=_positive_int)
    p = cmd("send", "send bytes; waits for the peer's acknowledgement (tcp.send)")
    p.add_argument("id", type=_positive_int)
    p.add_argument("data", nargs="?", help="text to send (UTF-8)")
    p.add_argument("--hex", metavar="HEX", help="send these bytes instead, e.g. 68656c6c6f")
    p.add_argument("--file", metavar="F", help="send the bytes of file F ('-': stdin)")
    p = cmd("recv", "receive up to MAX bytes (tcp.recv); empty means the peer sent FIN")
    p.add_argument("id", type=_positive_int)
    p.add_argument("max", type=_positive_int, metavar="MAX")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_WAIT_MS, metavar="MS")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--hex", action="store_true", help="print the bytes as hex")
    form.add_argument("--raw", action="store_true", help="write the bytes alone to stdout")
    p = cmd("disconnect", "send FIN, or RST with --abortive (tcp.disconnect)")
    p.add_argument("id", type=_positive_int)
    p.add_argument("--abortive", action="store_true")
    p = cmd("close", "upload if needed, close and free the connection (tcp.close)")
    p.add_argument("id", type=_positive_int)
    cmd("list", "your connection ids (tcp.list)")
    p = cmd("trace", "hop-by-hop NDIS calls of a connection (trace.get)")
    p.add_argument("id", type=_positive_int)
    p.add_argument("--limit", type=_positive_int, metavar="N", help="only the last N hops")
    p = cmd(
        "subscribe",
        "print tcp.event notifications of ID or '*' (events.subscribe); alone it waits until "
        "Ctrl-C or --count N; in run/shell it returns at once unless --count is given",
    )
    p.add_argument("id", type=_conn_or_star, metavar="ID|*")
    p.add_argument("--count", type=int, metavar="N", help="return after N events")
    p.add_argument("--timeout-ms", type=int, metavar="MS", help="give up waiting after MS")
    p = cmd("fault", "inject, clear and list faults (fault.*)")
    fsub = p.add_subparsers(dest="fault_cmd", metavar="inject|clear|list", required=True)
    q = fsub.add_parser(
        "inject",
        help="inject a fault: KIND key=value...",
        description="e.g. fault inject peer_reset conn=1; fault inject delay layer=im0 "
        "call=MiniportTcpOffloadSend ms=50",
    )
    q.add_argument("kind")
    q.add_argument("keys", nargs="*", type=_key_value, metavar="key=value")
    q = fsub.add_parser("clear", help="clear fault ID or '*' (all)")
    q.add_argument("id", type=_conn_or_star, metavar="ID|*")
    fsub.add_parser("list", help="active faults")
    p = cmd("events", "wait for and print subscribed events (run/shell)")
    p.add_argument("--count", type=int, default=1, metavar="N", help="events to wait for")
    p.add_argument("--timeout-ms", type=int, metavar="MS", help="give up waiting after MS")
    p = cmd("sleep", "pause (run/shell), e.g. to let events arrive")
    p.add_argument("seconds", type=float)
    if not session:
        p = cmd("run", "run several commands over one RPC connection (one argument each)")
        p.add_argument("commands", nargs="+", metavar="'COMMAND ARGS'")
        p = cmd("shell", "read commands line by line from stdin, one RPC connection")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chimneyctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rpc",
        default=os.environ.get("CHIMNEY_RPC", DEFAULT_ADDRESS),
        metavar="ADDR",
        help=f"daemon address, HOST:PORT or unix:PATH (default $CHIMNEY_RPC or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--token", default=os.environ.get("CHIMNEY_TOKEN"), help="auth token ($CHIMNEY_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="machine output (see below)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_CALL_TIMEOUT,
        metavar="S",
        help=f"client-side limit per call in seconds (default {DEFAULT_CALL_TIMEOUT:g})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_commands(sub, session=False)
    return parser


def build_line_parser() -> argparse.ArgumentParser:
    """Parser of one `run`/`shell` command (no global options, no nesting)."""
    parser = _Parser(prog="chimneyctl", add_help=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_commands(sub, session=True)
    return parser


# ================================================================================================
# output
# ================================================================================================
def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return repr(value)


def _fmt(value: Any) -> str:
    """A compact, stable rendering of a value in a table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


@dataclass
class Output:
    """Where results go: rich for people, JSON Lines for scripts."""

    json_mode: bool
    file: IO[str]
    console: Console = field(init=False)

    def __post_init__(self) -> None:
        tty = self.file.isatty()
        self.console = Console(
            file=self.file, highlight=False, width=None if tty else 160, soft_wrap=not tty
        )

    def json(self, value: Any) -> None:
        self.file.write(json.dumps(value, default=_json_default, ensure_ascii=False) + "\n")
        self.file.flush()

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def table(self, table: Table) -> None:
        # Rendered, then right-stripped: rich pads cells, and trailing blanks spoil copy-paste.
        with self.console.capture() as cap:
            self.console.print(table)
        text = "\n".join(line.rstrip() for line in cap.get().splitlines())
        self.file.write(text + "\n")
        self.file.flush()

    def raw(self, data: bytes) -> None:
        self.file.flush()
        buffer = getattr(self.file, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stream (tests): keep bytes visible rather than lose them
            self.file.write(data.decode("utf-8", "backslashreplace"))


def _table(*columns: str, title: str | None = None) -> Table:
    t = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, pad_edge=False
    )
    for c in columns:
        t.add_column(c, no_wrap=True)
    return t


def _print_data(out: Output, data: bytes, hex_mode: bool) -> None:
    if not data:
        out.line("(end of stream)")
        return
    if not hex_mode:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
            out.line(f"{len(data)} bytes: {text}")
            return
    out.line(f"{len(data)} bytes (hex): {data.hex()}")


def _print_event(out: Output, note: Notification) -> None:
    if note.method != "tcp.event":
        if out.json_mode:
            out.json({"notification": note.method, "params": note.params})
        else:
            out.line(f"notification {note.method} {_fmt(note.params)}")
        return
    conn, event, info = [*note.params, None, None, None][:3]
    if out.json_mode:
        out.json({"event": event, "conn": conn, "info": info if info is not None else {}})
    else:
        extra = f" {_fmt(info)}" if info else ""
        out.line(f"event conn {conn}: {event}{extra}")


# ================================================================================================
# commands
# ================================================================================================
@dataclass
class Session:
    """One RPC connection and the output, shared by the commands of a run/shell."""

    args: argparse.Namespace
    out: Output
    interactive: bool = False  # inside run/shell: subscribe returns at once
    shown: int = 0  # events printed between commands, not yet claimed by `events`
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.connect(
                self.args.rpc, token=self.args.token, call_timeout=self.args.timeout
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def print_events(self) -> None:
        """Print the events that came in while the last command ran."""
        if self._client is None:
            return
        while self._client.notifications:
            _print_event(self.out, self._client.notifications.pop(0))
            self.shown += 1

    def wait_events(self, count: int | None, timeout_ms: int | None) -> None:
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        # events already printed after an earlier command count towards this wait: a
        # notification that arrives with the `subscribe` reply must not be waited for again
        seen = self.shown if count is None else min(self.shown, count)
        self.shown -= seen
        while count is None or seen < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            note = self.client.wait_notification(left)
            if note is None:
                return
            _print_event(self.out, note)
            seen += 1


Handler = Callable[[Session, argparse.Namespace], None]


def _ping(s: Session, a: argparse.Namespace) -> None:
    r = s.client.ping()
    s.out.json(r) if s.out.json_mode else s.out.line(r)


def _info(s: Session, a: argparse.Namespace) -> None:
    if a.id is not None:
        return _conn_info(s, a)
    r = s.client.stack_info()
    if s.out.json_mode:
        return s.out.json(r)
    head = f"chimneyd {r.get('version', '?')} · contract {r.get('contract', '?')}"
    rpc = r.get("rpc")
    if isinstance(rpc, dict) or rpc is not None:
        head += f" · rpc {_fmt(rpc)}"
    s.out.line(head)
    t = _table("layer", "kind", "lower", "state")
    for layer in r.get("layers", []):
        t.add_row(
            _fmt(layer.get("name")),
            _fmt(layer.get("kind")),
            _fmt(layer.get("lower")),
            _fmt(layer.get("state")),
        )
    s.out.table(t)


_GAUGES = ("offloads_active", "handles", "outstanding_nbls")
_SUCCESS = ("NDIS_STATUS_SUCCESS", "NDIS_STATUS_PENDING")


def _stats(s: Session, a: argparse.Namespace) -> None:
    r = s.client.stack_stats()
    if s.out.json_mode:
        return s.out.json(r)
    layers: dict[str, Any] = r.get("layers", {}) or {}
    # Gauges first (the contract's three), then whatever scalar counters the layers report,
    # then the per-call counters summed: total calls and those with a non-success status.
    extra: list[str] = []
    for m in layers.values():
        for k, v in m.items():
            if k not in _GAUGES and k not in extra and isinstance(v, int | float):
                extra.append(k)
    t = _table("layer", *_GAUGES, *extra, "calls", "failed")
    for name, m in layers.items():
        calls = m.get("calls") if isinstance(m.get("calls"), dict) else {}
        total = sum(v for v in calls.values() if isinstance(v, int))
        failed = sum(
            v
            for k, v in calls.items()
            if isinstance(v, int) and "/" in k and k.split("/", 1)[1] not in _SUCCESS
        )
        t.add_row(
            name,
            *(_fmt(m.get(g)) for g in _GAUGES),
            *(_fmt(m.get(k)) for k in extra),
            str(total),
            str(failed),
        )
    s.out.table(t)
    tail = [f"connections {_fmt(r.get('connections'))}"]
    if isinstance(r.get("rpc"), dict):
        tail.append(f"rpc {_fmt(r['rpc'])}")
    s.out.line(" · ".join(tail))


def _connect(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_connect(a.host, a.port, offload=a.offload, target=a.target)
    s.out.json(r) if s.out.json_mode else s.out.line(f"conn {r}")


def _listen(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_listen(a.host, a.port, offload=a.offload)
    s.out.json(r) if s.out.json_mode else s.out.line(f"listener {r}")


def _listener_info(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_listener_info(a.id)
    if s.out.json_mode:
        return s.out.json(r)
    s.out.line(f"listener {a.id}: {r.get('host')}:{r.get('port')} pending {r.get('pending')}")


def _accept(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_accept(a.id, a.timeout_ms)
    s.out.json(r) if s.out.json_mode else s.out.line(f"conn {r}")


def _offload(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_offload(a.id)
    if s.out.json_mode:
        return s.out.json(r)
    path = " → ".join(str(p) for p in r.get("path", []))
    s.out.line(f"conn {a.id}: {r.get('state')}" + (f" via {path}" if path else ""))


def _upload(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_upload(a.id)
    s.out.json(r) if s.out.json_mode else s.out.line(f"conn {a.id}: {r.get('state')}")


def _send(s: Session, a: argparse.Namespace) -> None:
    if sum(x is not None for x in (a.data, a.hex, a.file)) != 1:
        raise UsageError("send: give exactly one of DATA, --hex HEX, --file F")
    if a.file is not None:
        if a.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(a.file, "rb") as f:
                data = f.read()
    elif a.hex is not None:
        try:
            data = bytes.fromhex(a.hex)
        except ValueError:
            raise UsageError(f"send: not hex: {a.hex!r}") from None
    else:
        data = a.data.encode("utf-8")
    r = s.client.tcp_send(a.id, data)
    s.out.json(r) if s.out.json_mode else s.out.line(f"sent {r} bytes (acknowledged)")


def _recv(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_recv(a.id, a.max, a.timeout_ms)
    if a.raw:
        return s.out.raw(r)
    if s.out.json_mode:
        return s.out.json(r)
    _print_data(s.out, r, a.hex)


def _disconnect(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_disconnect(a.id, a.abortive)
    s.out.json(r) if s.out.json_mode else s.out.line(r)


def _close(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_close(a.id)
    s.out.json(r) if s.out.json_mode else s.out.line(f"conn {a.id}: closed")


def _conn_info(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_info(a.id)
    if s.out.json_mode:
        return s.out.json(r)
    t = _table("conn", str(a.id))
    order = ["state", "path", "local", "remote", "bytes_sent", "bytes_received", "handles"]
    for key in [*order, *(k for k in r if k not in order and k != "delegated")]:
        if key in r:
            value = r[key]
            shown = (
                " → ".join(map(str, value))
                if key == "path" and isinstance(value, list)
                else _fmt(value)
            )
            t.add_row(key, shown)
    delegated = r.get("delegated")
    if isinstance(delegated, dict):
        for k, v in delegated.items():
            t.add_row(f"delegated.{k}", _fmt(v))
    elif delegated is not None:
        t.add_row("delegated", _fmt(delegated))
    s.out.table(t)


def _list(s: Session, a: argparse.Namespace) -> None:
    r = s.client.tcp_list()
    if s.out.json_mode:
        return s.out.json(r)
    s.out.line(" ".join(map(str, r)) if r else "(no connections)")


def _trace(s: Session, a: argparse.Namespace) -> None:
    r = s.client.trace_get(a.id, a.limit)
    if s.out.json_mode:
        return s.out.json(r)
    with_event = any(h.get("event") is not None for h in r)
    cols = ["seq", "t (µs)", "layer", "call", "handle", "context", "nbl", "status"]
    t = _table(*cols, *(["event"] if with_event else []))
    t0 = r[0].get("t_ns") if r else None
    for h in r:
        tn = h.get("t_ns")
        rel = f"{(tn - t0) / 1000:.1f}" if isinstance(tn, int) and isinstance(t0, int) else ""
        row = [_fmt(h.get("seq")), rel, *(_fmt(h.get(k)) for k in cols[2:])]
        if with_event:
            row.append(_fmt(h.get("event")))
        t.add_row(*row)
    s.out.table(t)


def _subscribe(s: Session, a: argparse.Namespace) -> None:
    r = s.client.events_subscribe(a.id)
    if s.out.json_mode:
        s.out.json(r)
    else:
        s.out.line(f"subscribed to {'all connections' if a.id == '*' else f'conn {a.id}'}")
    if s.interactive and a.count is None:
        return  # run/shell: later events print as they arrive
    s.wait_events(a.count, a.timeout_ms)


def _events(s: Session, a: argparse.Namespace) -> None:
    s.wait_events(a.count, a.timeout_ms)


def _sleep(s: Session, a: argparse.Namespace) -> None:
    if s._client is not None:
        # Read while sleeping, so events are not held up behind the pause.
        deadline = time.monotonic() + a.seconds
        while (left := deadline - time.monotonic()) > 0:
            note = s._client.wait_notification(left)
            if note is not None:
                _print_event(s.out, note)
    else:
        time.sleep(a.seconds)


def _fault(s: Session, a: argparse.Namespace) -> None:
    c = s.client
    if a.fault_cmd == "inject":
        fid = c.fault_inject(a.kind, **dict(a.keys))
        s.out.json(fid) if s.out.json_mode else s.out.line(f"fault {fid}")
    elif a.fault_cmd == "clear":
        r = c.fault_clear(a.id)
        s.out.json(r) if s.out.json_mode else s.out.line("cleared")
    else:
        faults = c.fault_list()
        if s.out.json_mode:
            return s.out.json(faults)
        if not faults:
            return s.out.line("(no faults)")
        t = _table("id", "kind", "keys")
        for f in faults:
            keys = {k: v for k, v in f.items() if k not in ("id", "kind")}
            t.add_row(_fmt(f.get("id")), _fmt(f.get("kind")), _fmt(keys))
        s.out.table(t)


HANDLERS: dict[str, Handler] = {
    "ping": _ping,
    "info": _info,
    "stats": _stats,
    "connect": _connect,
    "listen": _listen,
    "listener-info": _listener_info,
    "accept": _accept,
    "offload": _offload,
    "upload": _upload,
    "send": _send,
    "recv": _recv,
    "disconnect": _disconnect,
    "close": _close,
    "list": _list,
    "trace": _trace,
    "subscribe": _subscribe,
    "events": _events,
    "sleep": _sleep,
    "fault": _fault,
}


# ================================================================================================
# running
# ================================================================================================
def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _execute(session: Session, args: argparse.Namespace) -> int:
    """Run one parsed command; print its error. Returns its exit status."""
    try:
        HANDLERS[args.command](session, args)
        return EXIT_OK
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except ChimneyError as exc:
        _fail(str(exc))
        return EXIT_ERROR
    except OSError as exc:  # --file that cannot be read
        _fail(str(exc))
        return EXIT_ERROR
    finally:
        session.print_events()


def _parse_line(parser: argparse.ArgumentParser, line: str) -> argparse.Namespace:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"{line!r}: {exc}") from None
    if words and words[0] in ("run", "shell"):
        raise UsageError(f"{words[0]!r} cannot be nested")
    return parser.parse_args(words)


def _run(session: Session, commands: Sequence[str]) -> int:
    parser = build_line_parser()
    parsed = []
    for text in commands:  # check the whole script before touching the daemon
        try:
            parsed.append(_parse_line(parser, text))
        except UsageError as exc:
            _fail(str(exc))
            return EXIT_USAGE
        except _HelpShown as exc:
            return exc.status
    for args in parsed:
        status = _execute(session, args)
        if status != EXIT_OK:
            return status
    return EXIT_OK


def _shell(session: Session, stdin: IO[str]) -> int:
    parser = build_line_parser()
    tty = stdin.isatty()
    worst = EXIT_OK
    while True:
        if tty:
            session.out.file.write("chimney> ")
            session.out.file.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text in ("exit", "quit"):
            break
        if text in ("help", "?"):
            parser.print_usage(session.out.file)
            session.out.file.write("  (COMMAND -h for its arguments; exit or Ctrl-D ends)\n")
            continue
        try:
            args = _parse_line(parser, text)
        except UsageError as exc:
            _fail(str(exc))
            worst = max(worst, EXIT_USAGE)
            continue
        except _HelpShown:
            continue
        status = _execute(session, args)
        worst = max(worst, status)
    return worst  # the worst status of any line: 0, 1 (an error) or 2 (a usage error)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `chimneyctl`; returns the exit status (also when called in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except _HelpShown as exc:
        return exc.status
    session = Session(args, Output(args.json, sys.stdout))
    try:
        if args.command == "run":
            session.interactive = True
            return _run(session, args.commands)
        if args.command == "shell":
            session.interactive = True
            return _shell(session, sys.stdin)
        return _execute(session, args)
    except KeyboardInterrupt:
        # Ctrl-C ends a one-shot `subscribe` normally; anything else was interrupted.
        return EXIT_OK if args.command == "subscribe" else EXIT_INTERRUPTED
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
