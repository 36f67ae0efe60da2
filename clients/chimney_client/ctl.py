"""`chimneyctl`: one sub-command per RPC method, tables for people, `--json` for scripts.

Connections belong to the RPC client that opened them: the daemon closes them when that client
goes away. A one-shot `chimneyctl connect ...` therefore ends its connection as it exits, so
`run` (commands as arguments) and `shell` (commands from stdin) execute many commands over one
RPC connection, where `connect ... as NAME` and `$last` name the connections a script makes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from .blocking import Client
from .ctl_faults import (
    FAULT_ALIASES,
    FAULT_KINDS,
    LAYER_FAULTS,
    FaultSpecError,
    check_fault,
    fault_kinds_help,
)
from .ctl_help import TerminalWidth
from .ctl_live import WatchLayout, terminal_columns
from .ctl_render import (
    HOP_COLUMNS,
    Output,
    call_totals,
    fmt,
    hop_cells,
    table,
    table_width,
    unsent_acks_cell,
)
from .errors import (
    CallTimeout,
    ChimneyError,
    ConnectFailed,
    ConnectionLost,
    Denied,
    NotFound,
    ProtocolError,
    RpcError,
    RpcTimeout,
)
from .protocol import ADDRESS_FORMS, DEFAULT_ADDRESS, Notification, parse_address
from .version import package_version

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: stdout closed under us (`chimneyctl ... | head`): what a shell reports for a writer that
#: SIGPIPE ended (128 + 13), as for `cat FILE | head`, so `set -o pipefail` sees it the same way
EXIT_BROKEN_PIPE = 141
#: Default server-side wait of `recv` and `accept`, so a CLI never hangs on a silent peer.
DEFAULT_WAIT_MS = 5000
#: Client-side limit for one call (seconds); calls that wait server-side get their wait on top.
DEFAULT_CALL_TIMEOUT = 60.0
#: What `$last` stands for in run/shell: the last connection made by connect or accept.
LAST = "$last"


def _version() -> str:
    return package_version()


DESCRIPTION = """\
Drive a chimneyd daemon over its msgpack-RPC port (contract v1).

Connections belong to the RPC connection that opened them: the daemon closes them when that
client goes away, so a one-shot `chimneyctl connect` is closed again as chimneyctl exits. To work
with a connection, run several commands over one RPC connection, and name the connections you
make with `as NAME` (or say `$last`, the last one made; single-quote it in a shell):

  chimneyctl run 'connect 127.0.0.1 9000 as c' 'send c hello' 'recv c 100' 'trace c' 'close c'
  printf 'connect 127.0.0.1 9000\\nsend $last hello\\n' | chimneyctl shell

`run` checks every command's syntax (and that every name was made by an earlier command) first,
then runs them in order and stops at the first error (or Ctrl-C), clearing the faults it injected.
`shell` reads one command per line (blank lines and # comments are skipped; `help` lists the
commands), keeps going after an error and exits with the worst status of its lines. A run that
completes, and a shell, leave their faults on a layer in place: each is named on stderr at the
end, to clear with `chimneyctl fault clear ID`. In both,
events of a `subscribe` are printed as they arrive, after the command during which they came in;
`subscribe ... --count N` and `events --count N` wait for N of them (with `--timeout-ms MS`, fewer
by then is an error, exit 1). `sleep SECONDS` pauses.
"""

EPILOG = """\
output:
  Human output is tables and short lines; errors go to stderr as "error: SYMBOL: message"
  (e.g. "error: NOT_FOUND: no connection 17"). With --json (before or after the command) every
  command prints one JSON object on stdout, JSON Lines in run/shell:
    {"command": "close 17", "ok": false, "error": {"code": 3, "symbol": "NOT_FOUND",
     "message": "NOT_FOUND: no connection 17"}}
    {"command": "send c hi", "ok": true, "result": 2}
  and every event one object {"event": NAME, "conn": ID, "info": {...}}. Binary data (recv) is
  {"base64": "..."}. A "note" key carries what a person would read on stderr.

exit status: 0 ok, 1 an RPC or connection error, 2 a usage error, 130 interrupted (Ctrl-C),
  141 stdout closed early (e.g. `| head`; nothing more is printed).
environment: CHIMNEY_RPC (default for --rpc), CHIMNEY_TOKEN (default for --token).
shell completion: eval "$(chimneyctl completion bash)"  (zsh: chimneyctl completion zsh)
"""


class UsageError(Exception):
    """A command line that does not parse, or names nothing; exit status 2."""


class EmptyTrace(ChimneyError):
    """`trace --svg/--mermaid` found no hop to draw: exit 1 rather than an empty figure."""


_EVENTS_TIMEOUT_HELP = (
    "give up waiting after MS; with --count N, fewer than N events by then is an error: "
    "`error: timed out: got K of N events in MS ms`, exit 1"
)


class EventsTimeout(ChimneyError):
    """`subscribe`/`events --count N` ended its wait with fewer than N events: exit 1 as any
    failed command, so a script (and a run, which stops there) sees the wait came up short."""


class _HelpShown(Exception):
    """argparse printed help (or similar) and wanted to exit with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


class _HelpFormatter(TerminalWidth, argparse.RawDescriptionHelpFormatter):
    """A description written as one line (every command's) is wrapped to the terminal (piped
    too: `ctl_help.help_columns`), as the options are; one laid out in lines (the main page,
    the fault kinds with their copyable examples) is kept as written.
    RawDescriptionHelpFormatter alone printed a command's description as one line hundreds of
    characters long."""

    #: what a description quotes to be typed as written (a `code span`, a "$(...)" to paste):
    #: never split over two lines, where it would no longer be a command one can copy
    _QUOTED = re.compile(r"`[^`]+`|\"[^\"]+\"")
    _KEEP = "\x00"  # stands for a space inside a quoted span while the text is wrapped

    #: a line laid out to be copied as it is: an example command (JSON too, indented)
    _VERBATIM = ("chimneyctl ", "printf ", "e.g. ")
    _JSON = ("{", '"')
    #: a line that starts a paragraph of its own: a label ("exit status: ...", "output:"),
    #: whose lines indented two more continue it
    _LABEL = re.compile(r"[a-z]+( [a-z]+){0,2}:(\s|$)")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip("\n"):
            lines = text.splitlines()
            if all(len(indent + line) <= width for line in lines):
                return super()._fill_text(text, width, indent)
            return "\n".join(self._reflow(lines, width, indent))
        return self._wrap(text, width, indent, indent)

    def _wrap(self, text: str, width: int, first: str, rest: str) -> str:
        # the spans' spaces are kept first: the prose's runs of spaces become one, theirs not
        kept = self._QUOTED.sub(lambda m: m.group(0).replace(" ", self._KEEP), text)
        joined = " ".join(kept.split())
        return textwrap.fill(
            joined,
            width,
            initial_indent=first,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        ).replace(self._KEEP, " ")

    def _reflow(self, lines: list[str], width: int, indent: str) -> list[str]:
        """Text laid out in lines, in a terminal narrower than its lines: each paragraph (lines
        of one indent, up to a blank line, an example or a label) wrapped again to `width` at
        its indent; examples kept whole, to copy."""
        out: list[str] = []
        para: list[str] = []
        first = rest = ""  # the paragraph's indent, then its following lines'

        def flush() -> None:
            if para:
                out.append(self._wrap(" ".join(para), width, indent + first, indent + rest))
                para.clear()

        for line in lines:
            body = line.lstrip()
            lead = line[: len(line) - len(body)]
            if (
                not body
                or body.startswith(self._VERBATIM)
                or (len(lead) >= 4 and body.startswith(self._JSON))
            ):
                flush()
                out.append(indent + line if body else "")
                continue
            label = self._LABEL.match(body)
            if not para or lead != rest or label:
                flush()
                first = rest = lead
                if label and label.end() < len(body):
                    rest = lead + "  "  # a label's lines hang under it
            para.append(body)
        flush()
        return out


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
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class Ref(str):
    """A connection or listener named in a script: a name made by `... as NAME`, or `$last`.
    Resolved to an id when its command runs."""


def _positive_int(value: str, what: str = "an id (positive int)") -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return n


def _whole(value: str, what: str, low: int) -> int:
    """An integer of at least `low`: a negative count, limit or wait is a usage error, not a
    request the daemon refuses or a wait that silently ends at once."""
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return n


def _event_count(value: str) -> int:
    return _whole(value, "a number of events (positive int)", 1)


def _timeout_ms(value: str) -> int:
    return _whole(value, "milliseconds (int, 0 or more)", 0)


def _conn_count(value: str) -> int:
    return _whole(value, "a number of connections (int, 0 or more)", 0)


def _byte_count(value: str) -> int:
    return _positive_int(value, "a number of bytes (positive int)")


def _hop_count(value: str) -> int:
    return _positive_int(value, "a number of hops (positive int)")


def _id_or_ref(value: str) -> int | Ref:
    if value == LAST or _NAME_RE.fullmatch(value):
        return Ref(value)
    if value == "":
        raise argparse.ArgumentTypeError(
            "empty id (an unquoted $last in a shell becomes empty: write '$last')"
        )
    return _positive_int(value)


def _id_ref_or_star(value: str) -> int | str:
    return "*" if value == "*" else _id_or_ref(value)


def _nbl(value: str) -> int | str:
    return "first" if value == "first" else _positive_int(value)


def _fault_id_or_star(value: str) -> int | str:
    return "*" if value == "*" else _positive_int(value)


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port {value!r}") from None
    if not 0 <= n < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return n


def _rpc_address(value: str) -> str:
    """--rpc (or $CHIMNEY_RPC, which argparse passes through here too): an address that parses,
    so a typo is a usage error naming it, not a traceback or a connect to the wrong place."""
    try:
        parse_address(value)
    except ValueError as exc:
        where = " (from CHIMNEY_RPC)" if value == os.environ.get("CHIMNEY_RPC") else ""
        raise argparse.ArgumentTypeError(f"{exc}{where}") from None
    return value


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    # NaN passes `n < 0`, and inf or 1e300 overflow the event loop's clock
    if not 0 <= n <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected seconds from 0 to {MAX_SECONDS:g}, got {value!r}"
        )
    return n


#: the longest sleep or interval a command takes: a day
MAX_SECONDS = 86400.0


def _call_timeout(value: str) -> float:
    """--timeout: a limit a call can meet; 0 or less would fail every call before it is sent."""
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 < n < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds > 0 (finite), got {value!r}")
    return n


def parse_value(text: str) -> Any:
    """`key=value` values of `fault inject` and `update`: int, float, true/false/null, JSON,
    else the str."""
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


#: `update` keys whose value is a link-layer address: kept as the text given, which the
#: daemon reads (`000000000000` is an address of six bytes, not the int 0).
_ADDRESS_KEYS = frozenset({"DlDestinationAddress", "NextHop"})


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value if key in _ADDRESS_KEYS else parse_value(value)


# ================================================================================================
# parsers
# ================================================================================================
#: Commands that make something a script can name with `as NAME`, and what they make.
NAMING = {"connect": "connection", "accept": "connection", "listen": "listener"}
#: Commands whose `id` is a listener; every other `id` (not a fault's) is a connection.
LISTENER_ID = frozenset({"listener-info", "accept"})
#: Commands that only run alone (not as a run/shell line).
ONE_SHOT_ONLY = ("run", "shell", "top", "completion")
#: Commands that only run as a run/shell line: `events` waits for what a `subscribe` earlier
#: in the same RPC connection asked for, and a lone chimneyctl has subscribed to nothing.
SESSION_ONLY = ("events",)

#: --json of a command; its format is under "output" in `chimneyctl -h`, where the global
#: option's own help says so without sending the reader to the page it is on.
_JSON_HELP = "machine output: one JSON object per command and per event (format: chimneyctl -h)"
_JSON_HELP_GLOBAL = (
    "machine output, also after COMMAND: one JSON object per command and per event (format: "
    "'output' below)"
)


def _add_commands(sub: Any, *, session: bool) -> None:
    """Every command; the same table serves the command line and run/shell lines."""

    def cmd(
        name: str,
        help: str,
        description: str | None = None,
        json_help: str = _JSON_HELP,
        **kw: Any,
    ) -> _Parser:
        p: _Parser = sub.add_parser(
            name,
            help=help,
            description=description or help,
            formatter_class=_HelpFormatter,
            **kw,
        )
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
        return p

    def conn_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "id",
            type=_id_or_ref,
            metavar="ID",
            help="connection id, a name made with `as`, or $last",
        )

    def wait_arg(p: argparse.ArgumentParser, help: str) -> None:
        p.add_argument(
            "--timeout-ms",
            type=_timeout_ms,
            default=DEFAULT_WAIT_MS,
            metavar="MS",
            help=f"{help} (default {DEFAULT_WAIT_MS})",
        )

    cmd("ping", "check the daemon answers (ping)")
    p = cmd(
        "info",
        "stack layers (stack.info), or one connection (tcp.info)",
        "Without ID: the daemon's version, contract and layers (stack.info). With ID: the "
        "connection's state, path, addresses, byte counts, the handle or context each layer holds "
        "for it, and its delegated TCP state as of the offload or the last query (tcp.info); "
        "--live asks the offload target for the delegated state now (tcp.query).",
    )
    p.add_argument(
        "id",
        nargs="?",
        type=_id_or_ref,
        metavar="ID",
        help="connection id, a name made with `as`, or $last",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="also query the offload target for the delegated state now (tcp.query; offloaded only)",
    )
    cmd(
        "stats",
        "per-layer gauges and counters (stack.stats)",
        "The contract's gauges (offloads_active, handles, outstanding_nbls), bytes, and per layer "
        "the calls counted and those that failed: completed with an error NDIS status. Event "
        "indications (e.g. NdisTcpOffloadEventHandler/TcpIndicateDisconnect) are not failures.",
    )
    cmd("metrics", "the stack.stats gauges and counters as Prometheus text (stack.metrics)")
    p = cmd(
        "connect",
        "open a connection to a loopback peer (tcp.connect)",
        "Open a real TCP connection to HOST:PORT through the host stack and offload it at once "
        "(unless --no-offload). In run/shell, `connect HOST PORT as NAME` names it for later "
        "commands ($last also refers to it). A one-shot `chimneyctl connect` only shows that the "
        "peer is reachable: the daemon closes the connection as chimneyctl exits (it belongs to "
        "the RPC client that made it); use run or shell to work with it.",
    )
    p.add_argument("host", help="peer address (loopback)")
    p.add_argument("port", type=_port, help="peer port")
    p.add_argument("--no-offload", dest="offload", action="store_false", help="stay in host mode")
    p.add_argument("--target", metavar="NIC", help="pin the offload target layer")
    p = cmd(
        "listen",
        "listen for connections (tcp.listen); port 0 picks one",
        "Listen on HOST:PORT (port 0 picks one; listener-info shows it). In run/shell, "
        "`listen HOST PORT as NAME` names the listener for accept and listener-info.",
    )
    p.add_argument("host", help="address to listen on (loopback)")
    p.add_argument("port", type=_port, help="port; 0 picks a free one")
    p.add_argument("--no-offload", dest="offload", action="store_false", help="do not offload")
    p = cmd("listener-info", "a listener's address and pending count (tcp.listener_info)")
    p.add_argument("id", type=_id_or_ref, metavar="ID", help="listener id or name")
    p = cmd(
        "accept",
        "take the next accepted connection (tcp.accept)",
        "Take the next connection accepted by listener ID; in run/shell, `accept ID as NAME` "
        "names it ($last also refers to it).",
    )
    p.add_argument("id", type=_id_or_ref, metavar="ID", help="listener id or name")
    wait_arg(p, "give up after MS ms")
    p = cmd("offload", "offload a connection to its target (tcp.offload)")
    conn_arg(p)
    p = cmd("upload", "terminate the offload, back to the host stack (tcp.upload)")
    conn_arg(p)
    p = cmd(
        "send",
        "send bytes; waits for the peer's acknowledgement (tcp.send)",
        "Send DATA (the rest of the line, words joined by one space: quote it to keep other "
        "spacing; `--` before data that starts with '-'), or --hex / --file bytes. Returns when "
        "the peer's kernel acknowledged every byte.",
    )
    conn_arg(p)
    p.add_argument("data", nargs="*", help="text to send (UTF-8)")
    p.add_argument("--hex", metavar="HEX", help="send these bytes instead, e.g. 68656c6c6f")
    p.add_argument("--file", metavar="F", help="send the bytes of file F ('-': stdin)")
    p = cmd("recv", "receive up to MAX bytes (tcp.recv); empty means the peer sent FIN")
    conn_arg(p)
    p.add_argument("max", type=_byte_count, metavar="MAX", help="most bytes to take")
    wait_arg(p, "give up after MS ms, losing nothing")
    p.add_argument(
        "--waitall",
        action="store_true",
        help="take exactly MAX bytes (fewer only at the end of stream); "
        "one that times out short leaves what it saw to the next recv",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument("--hex", action="store_true", help="print the bytes as hex")
    form.add_argument("--raw", action="store_true", help="write the bytes alone to stdout")
    p = cmd("disconnect", "send FIN, or RST with --abortive (tcp.disconnect)")
    conn_arg(p)
    p.add_argument("--abortive", action="store_true", help="reset (RST) instead of FIN")
    p = cmd("close", "upload if needed, close and free the connection (tcp.close)")
    conn_arg(p)
    cmd(
        "list",
        "connection ids you can see (tcp.list)",
        "Your connection ids; every connection with the admin token.",
    )
    p = cmd(
        "query",
        "the delegated TCP state now (tcp.query: NdisQueryOffloadState)",
        "Ask the offload target for the connection's delegated TCP state now (RcvNxt, SndUna, "
        "SndNxt, CWnd, SRtt x8, ...). The connection must be offloaded.",
    )
    conn_arg(p)
    p = cmd(
        "update",
        "new cached TCP, neighbor or path variables (tcp.update: NdisUpdateOffload)",
        "Hand the offload target new cached TCP variables, e.g. "
        "`update c RcvIndicationSize=512 KaTimeout=7200000`; or those of the connection's "
        "neighbor or path, shared with every connection on it: "
        "`update c object=neighbor DlDestinationAddress=02:00:00:00:00:2a`, "
        "`update c object=path PathMtu=1400` (`info c` then shows each layer's copy). "
        "`update c object=path NextHop=02:00:00:00:00:2b` moves the path, and every "
        "connection on it, under the neighbor of that next hop (a next-hop change).",
    )
    conn_arg(p)
    p.add_argument("keys", nargs="+", type=_key_value, metavar="key=value", help="variables")
    p = cmd(
        "trace",
        "hop-by-hop NDIS calls of a connection (trace.get), as a table or a picture",
        "The connection's hops, oldest first (also for a recently closed connection): who ran "
        "which NDIS call with which handle or context, NBL and status. --svg FILE draws them as "
        "a sequence diagram (one lane per layer, NDIS between them, one colour per NBL); "
        "--mermaid prints Mermaid sequenceDiagram text (renders on GitHub).",
    )
    conn_arg(p)
    p.add_argument("--limit", type=_hop_count, metavar="N", help="only the last N hops")
    p.add_argument(
        "--nbl",
        type=_nbl,
        metavar="N|first",
        help="only the hops carrying NBL N; `first`: the first NBL in the trace (a connection's "
        "first send, down every layer and its completion back up)",
    )
    p.add_argument("--svg", metavar="FILE", help="write an SVG sequence diagram to FILE")
    p.add_argument(
        "--mermaid",
        nargs="?",
        const="-",
        metavar="FILE",
        help="print a Mermaid sequenceDiagram (to FILE if given)",
    )
    p = cmd(
        "watch",
        "print a connection's hops as they happen, until it is closed",
        "Poll trace.get and print each new hop; stop when the connection is closed and its last "
        "hops are printed (Ctrl-C: exit 130). Another client's connection needs the admin token.",
        json_help='machine output: one JSON object per hop, {"hop": {...}, "conn": ID}',
    )
    conn_arg(p)
    p.add_argument(
        "--interval",
        type=_seconds,
        default=0.2,
        metavar="S",
        help="seconds between polls (default 0.2)",
    )
    p.add_argument("--new", action="store_true", help="skip the hops recorded before now")
    p = cmd(
        "subscribe",
        "print tcp.event notifications of ID or '*' (events.subscribe)",
        "Print tcp.event notifications of connection ID or of '*' (every connection you can see: "
        "only your own without the admin token). Alone it waits until Ctrl-C (exit 130) or "
        "--count N; in run/shell it returns at once unless --count is given.",
    )
    p.add_argument(
        "id", type=_id_ref_or_star, metavar="ID|*", help="connection id, name, $last, or '*'"
    )
    p.add_argument("--count", type=_event_count, metavar="N", help="return after N events")
    p.add_argument("--timeout-ms", type=_timeout_ms, metavar="MS", help=_EVENTS_TIMEOUT_HELP)
    p = cmd("fault", "inject, clear and list faults (fault.*); `fault kinds` lists the kinds")
    fsub = p.add_subparsers(dest="fault_cmd", metavar="inject|clear|list|kinds", required=True)
    q = fsub.add_parser(
        "inject",
        help="inject a fault: KIND key=value...",
        description="Inject a fault (fault.inject); prints its id.",
        epilog=fault_kinds_help(),
        formatter_class=_HelpFormatter,
    )
    kind = q.add_argument("kind", metavar="KIND", help="fault kind (listed below)")
    kind.complete_words = [*FAULT_KINDS, *FAULT_ALIASES]  # type: ignore[attr-defined]
    q.add_argument("keys", nargs="*", type=_key_value, metavar="key=value", help="the kind's keys")
    q.add_argument(
        "--unchecked",
        action="store_true",
        help="send KIND and keys as given (a kind or key this chimneyctl does not know)",
    )
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    q = fsub.add_parser(
        "clear", help="clear fault ID or '*' (all you may clear)", formatter_class=_HelpFormatter
    )
    q.add_argument("id", type=_fault_id_or_star, metavar="ID|*", help="fault id, or '*'")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    q = fsub.add_parser("list", help="active faults", formatter_class=_HelpFormatter)
    q.add_argument(
        "--used",
        action="store_true",
        help="those that ran their course too, and what each raise_next bug hit",
    )
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    q = fsub.add_parser(
        "kinds",
        help="every fault kind with its keys and an example",
        formatter_class=_HelpFormatter,
    )
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    p = cmd(
        "events",
        "wait for and print subscribed events (run/shell)",
        "Wait for and print the events of a subscribe made earlier in the same run or shell "
        "(a lone `chimneyctl events` has subscribed to nothing: it is refused), e.g. "
        "`chimneyctl run 'connect 127.0.0.1 9000 as c' 'subscribe c' 'close c' 'events --count 2'`.",
    )
    p.add_argument("--count", type=_event_count, default=1, metavar="N", help="events to wait for")
    p.add_argument("--timeout-ms", type=_timeout_ms, metavar="MS", help=_EVENTS_TIMEOUT_HELP)
    p = cmd("sleep", "pause (run/shell), e.g. to let events arrive")
    p.add_argument("seconds", type=_seconds, help="how long")
    if session:
        return
    p = cmd(
        "top",
        "a live view of the stack: per-layer gauges and rates, the busiest connections",
        "Full-screen, refreshed every --interval: per layer offloads_active, handles, "
        "outstanding_nbls, inbox depth, bytes and calls (with rates per second) and failures; "
        "then the busiest connections by bytes (every connection needs the admin token; at most "
        "--conns tcp.info calls per refresh). Ctrl-C ends it (exit 130). When stdout is not a "
        "terminal, one frame is printed per refresh; with --json, one JSON frame per refresh.",
        json_help="machine output: one JSON object per refresh (with --once, the one frame as "
        "the command's result)",
    )
    p.add_argument(
        "--interval", type=_seconds, default=1.0, metavar="S", help="refresh period (default 1)"
    )
    p.add_argument(
        "--conns",
        type=_conn_count,
        default=10,
        metavar="N",
        help="busiest connections shown (default 10)",
    )
    p.add_argument(
        "--once", action="store_true", help="print one frame (rates over one interval) and exit"
    )
    p = cmd(
        "run",
        "run several commands over one RPC connection (one argument each)",
        "Run COMMANDs in order over one RPC connection. At the first error (or Ctrl-C) stop, and "
        "clear the faults this run injected; a run that completes leaves them in place and names "
        "on stderr each fault still on a layer. Name what connect/accept/listen make with "
        "`as NAME`.",
    )
    p.add_argument("commands", nargs="+", metavar="'COMMAND ARGS'", help="one command each")
    cmd(
        "shell",
        "read commands line by line from stdin, one RPC connection",
        "One command per line from stdin (`help` lists them; exit or Ctrl-D ends); keeps going "
        "after an error and exits with the worst status of its lines. Faults it injected on a "
        "layer stay (each is named on stderr at the end).",
    )
    p = cmd(
        "completion",
        "print a shell completion script for chimneyctl, chimney-peer and chimney-soak",
        'bash: eval "$(chimneyctl completion bash)" (or save it under '
        '/etc/bash_completion.d/); zsh: eval "$(chimneyctl completion zsh)".',
    )
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chimneyctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--rpc",
        default=os.environ.get("CHIMNEY_RPC", DEFAULT_ADDRESS),
        type=_rpc_address,
        metavar="ADDR",
        help=f"daemon address, {ADDRESS_FORMS} (default $CHIMNEY_RPC or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CHIMNEY_TOKEN"),
        help="auth token, sent first (default $CHIMNEY_TOKEN); the admin token sees every "
        "connection",
    )
    parser.add_argument("--json", action="store_true", help=_JSON_HELP_GLOBAL)
    parser.add_argument(
        "--timeout",
        type=_call_timeout,
        default=DEFAULT_CALL_TIMEOUT,
        metavar="S",
        help=f"client-side limit per call in seconds (default {DEFAULT_CALL_TIMEOUT:g})",
    )
    parser.add_argument(
        "--version", action="version", version=f"chimneyctl {_version()} (contract 1)"
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


def command_summary(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(name, one-line help) of every sub-command of `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [(a.dest, a.help or "") for a in action._choices_actions]
    return []


# ================================================================================================
# session
# ================================================================================================
class _Shown:
    """A handler already printed its result (it prints more after it, e.g. events)."""


SHOWN = _Shown()


@dataclass
class Session:
    """One RPC connection and the output, shared by the commands of a run/shell."""

    args: argparse.Namespace
    out: Output
    json_default: bool = False
    interactive: bool = False  # inside run/shell: subscribe returns at once
    shown: int = 0  # events printed between commands, not yet claimed by `events`
    names: dict[str, tuple[str, int]] = field(default_factory=dict)  # `as NAME` bindings
    last_conn: int | None = None
    injected: list[int] = field(default_factory=list)  # fault ids this session injected
    lasting: dict[int, str] = field(default_factory=dict)  # of those, the ones on a layer: layer
    note: str | None = None  # what the current command wants a person to read
    line: str = ""  # the current command as typed
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

    def result(self, value: Any) -> _Shown:
        """Print the current command's JSON result now (before what the command prints next)."""
        if self.out.json_mode:
            self.out.json(_envelope(self.line, True, result=value, note=self.note))
            self.note = None
        return SHOWN

    def made(self, kind: str, ident: int, name: str | None) -> None:
        if kind == "connection":
            self.last_conn = ident
        if name is not None:
            self.names[name] = (kind, ident)

    def resolve(self, value: Any, want: str) -> Any:
        if not isinstance(value, Ref):
            return value
        if value == LAST:
            if want != "connection":
                raise UsageError(f"{LAST} is the last connection made, not a {want}")
            if self.last_conn is None:
                raise UsageError(f"{LAST}: no connection was made yet (connect or accept)")
            return self.last_conn
        bound = self.names.get(value)
        if bound is None:
            raise UsageError(
                f"{value!r} names nothing: give an id, {LAST}, or a name made earlier with "
                f"`connect HOST PORT as {value}`"
            )
        if bound[0] != want:
            raise UsageError(f"{value!r} names a {bound[0]}, not a {want}")
        return bound[1]

    def print_events(self) -> None:
        """Print the events that came in while the last command ran."""
        if self._client is None:
            return
        while self._client.notifications:
            _print_event(self.out, self._client.notifications.pop(0))
            self.shown += 1

    def wait_events(self, count: int | None, timeout_ms: int | None) -> int:
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        # events already printed after an earlier command count towards this wait: a
        # notification that arrives with the `subscribe` reply must not be waited for again
        seen = self.shown if count is None else min(self.shown, count)
        self.shown -= seen
        while count is None or seen < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            note = self.client.wait_notification(left)
            if note is None:
                break
            _print_event(self.out, note)
            seen += 1
        if count is not None and seen == count and not self.interactive:
            # a one-shot `subscribe`/`events --count N` prints N events: those read along with
            # the Nth (one read can hold several) are not flushed after it as the command ends
            self.client.notifications.clear()
        if count is not None and seen < count:
            if timeout_ms is None:  # the wait ended without a deadline: the connection went
                raise EventsTimeout(f"got {seen} of {count} events")
            raise EventsTimeout(f"timed out: got {seen} of {count} events in {timeout_ms} ms")
        return seen

    def clear_injected(self, why: str) -> None:
        """Clear the faults this session injected (a run that stopped early)."""
        if not self.injected or self._client is None or self._client.closed:
            return
        try:  # what was still armed: fault.list shows only active faults
            armed = {f.get("id") for f in self._client.fault_list()}
        except ChimneyError:
            armed = set(self.injected)
        cleared: list[int] = []
        gone: list[int] = []
        for fid in self.injected:
            try:
                self._client.fault_clear(fid)
            except NotFound:
                continue  # gone with its connection
            except ChimneyError:
                break
            # a one-shot fault (peer_reset, a used-up fail_next, …) had acted already: clearing
            # it answers true (it is no longer armed) but undid nothing, so it is not named
            gone.append(fid)
            if fid in armed:
                cleared.append(fid)
        self.injected = []
        for fid in gone:
            self.lasting.pop(fid, None)
        if not cleared:
            return
        text = f"cleared fault{'s' if len(cleared) > 1 else ''} {', '.join(map(str, cleared))}"
        note = f"{text}: injected by this run, which {why}"
        if self.json_default:
            line = "fault clear " + " ".join(map(str, cleared))
            self.out.json(_envelope(line, True, result=cleared, note=note))
        else:
            _stderr(f"note: {note}")

    def note_lasting(self) -> None:
        """Name the faults this run/shell left on a layer: they outlive it, and a completed run
        does not clear them (they may be what the user wanted to set up)."""
        if not self.lasting or self._client is None or self._client.closed:
            return
        try:  # one a fail_next/raise_next used up is gone already: name only what is listed
            listed = {f.get("id") for f in self._client.fault_list()}
        except ChimneyError:
            listed = set(self.lasting)
        for fid, layer in self.lasting.items():
            if fid in listed:
                _stderr(f"note: {_stays(fid, layer)}")


def _stays(fid: int, layer: Any) -> str:
    return f"fault {fid} stays on {layer} until `chimneyctl fault clear {fid}`"


def _print_event(out: Output, note: Notification) -> None:
    if note.method != "tcp.event":
        if out.json_mode:
            out.json({"notification": note.method, "params": note.params})
        else:
            out.line(f"notification {note.method} {fmt(note.params)}")
        return
    conn, event, info = [*note.params, None, None, None][:3]
    if out.json_mode:
        out.json({"event": event, "conn": conn, "info": info if info is not None else {}})
    else:
        extra = f" {fmt(info)}" if info else ""
        out.line(f"event conn {conn}: {event}{extra}")


def _envelope(
    line: str,
    ok: bool,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"command": line, "ok": ok}
    if ok:
        doc["result"] = result
    else:
        doc["error"] = error
    if note:
        doc["note"] = note
    return doc


def _stderr(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ================================================================================================
# commands: each returns its result (JSON mode) and prints for people (`s.out.line/table`)
# ================================================================================================
Handler = Callable[[Session, argparse.Namespace], Any]

_ONE_SHOT_NOTE = (
    "{what} was closed when chimneyctl left: it belongs to the RPC client that made it. To work "
    "with it, use `chimneyctl run '{cmd} as c' 'send c hi' ...` or `chimneyctl shell`"
)


def _ping(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.ping()
    s.out.line(r)
    return r


def _info(s: Session, a: argparse.Namespace) -> Any:
    if a.id is not None:
        return _conn_info(s, a)
    if a.live:
        raise UsageError("info --live needs a connection ID")
    r = s.client.stack_info()
    head = f"chimneyd {r.get('version', '?')} · contract {r.get('contract', '?')}"
    # extensions: which build and allocator answer (each moves the CPU per round); a daemon
    # that does not say is shown without them
    if r.get("build") is not None:
        head += f" · {fmt(r['build'])} build"
    if r.get("allocator") is not None:
        head += f" · allocator {fmt(r['allocator'])}"
    s.out.line(head)
    for line in _rpc_lines(r.get("rpc"), terminal_columns(s.out)):
        s.out.line(line)
    t = table("layer", "kind", "lower", "state")
    for layer in r.get("layers", []):
        t.add_row(*(fmt(layer.get(k)) for k in ("name", "kind", "lower", "state")))
    s.out.table(t)
    for layer in r.get("layers", []):
        if isinstance(layer.get("lowers"), dict):
            _mux_table(s, layer)
    shards = r.get("shards")
    if isinstance(shards, list) and shards:
        # a daemon of several shards: which one this client is on, and each one's process
        s.out.line(f"shards {len(shards)} · this client is on shard {fmt(r.get('shard'))}")
        st = table("shard", "state", "pid", "rss MB", "open fds", "fd limit")
        for p in shards:
            rss = p.get("rss_kb")
            st.add_row(
                fmt(p.get("shard")),
                fmt(p.get("state")),
                fmt(p.get("pid")),
                f"{rss / 1024:.1f}" if isinstance(rss, int) else "",
                fmt(p.get("open_fds")),
                fmt(p.get("fd_limit")),
            )
        s.out.table(st)
    return r


#: width of the wrapped `rpc limits` lines of `info` (the table below is about as wide)
_INFO_WIDTH = 96


def _rpc_lines(rpc: Any, columns: int | None = None) -> list[str]:
    """stack.info's `rpc` for people: its addresses and auth on one line, then each map (the
    limits) as key=value words wrapped under its name, not one line of some 300 characters."""
    if rpc is None:
        return []
    if not isinstance(rpc, dict):
        return [f"rpc {fmt(rpc)}"]
    scalars = {k: v for k, v in rpc.items() if not isinstance(v, dict)}
    lines = [f"rpc {fmt(scalars)}"] if scalars else []
    for key, value in rpc.items():
        if isinstance(value, dict):
            lead = f"rpc {key} "
            lines += textwrap.wrap(
                fmt(value),
                min(_INFO_WIDTH, columns or _INFO_WIDTH),  # a narrower terminal's width
                initial_indent=lead,
                subsequent_indent=" " * len(lead),
                break_long_words=False,
                break_on_hyphens=False,
            )
    return lines


def _mux_table(s: Session, layer: dict[str, Any]) -> None:
    """A MUX's lower layers (its NICs) as stack.info gives them: in service or not (failed,
    taken out), the connections each carries, its outstanding bytes and capacity."""
    lowers: dict[str, Any] = layer["lowers"]
    title = [f"{layer.get('name')} (mux)"]
    if layer.get("policy") is not None:
        title.append(f"policy {fmt(layer['policy'])}")
    if layer.get("evacuating") is not None:
        title.append(f"evacuating {fmt(layer['evacuating'])}")
    if isinstance(layer.get("deferred"), list):
        title.append(f"deferred {len(layer['deferred'])}")
    s.out.line(" · ".join(title))
    columns: list[str] = []  # every key any lower has, in the order the daemon gives them
    for m in lowers.values():
        if isinstance(m, dict):
            columns += [k for k in m if k not in columns]
    t = table("lower", *columns)
    for name, m in lowers.items():
        m = m if isinstance(m, dict) else {}
        t.add_row(name, *(fmt(m.get(k)) for k in columns))
    s.out.table(t)


_INFO_ORDER = ("state", "path", "local", "remote", "bytes_sent", "bytes_received")
STALE_DELEGATED = "delegated (as of offload/last query)"
LIVE_DELEGATED = "delegated (live: tcp.query now)"


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def _handle_rows(handles: Any) -> list[tuple[str, str]]:
    """`handles` of tcp.info as one row per layer: `handles.im0  context 8, handle 9`."""
    if not isinstance(handles, dict):
        return [] if _empty(handles) else [("handles", fmt(handles))]
    rows = []
    for layer, ids in handles.items():
        if isinstance(ids, dict):
            text = ", ".join(f"{k} {v}" for k, v in ids.items() if not _empty(v))
        else:
            text = fmt(ids)
        if text:
            rows.append((f"handles.{layer}", text))
    return rows


def _object_rows(objects: Any) -> list[tuple[str, str]]:
    """`objects` of tcp.info (after a neighbor or path update) as one row per layer:
    `objects.nic0  neighbor DlDestinationAddress=02:00:00:00:00:2a HostReachabilityDelta=0;
    path PathMtu=1400`."""
    if not isinstance(objects, dict):
        return [] if _empty(objects) else [("objects", fmt(objects))]
    rows = []
    for layer, held in objects.items():
        if isinstance(held, dict):
            text = "; ".join(
                f"{name} " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())
                if isinstance(values, dict)
                else f"{name} {fmt(values)}"
                for name, values in held.items()
            )
        else:
            text = fmt(held)
        rows.append((f"objects.{layer}", text))
    return rows


def _conn_info(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_info(a.id)
    live: dict[str, Any] | None = None
    if a.live:
        if r.get("state") == "offloaded":
            live = dict(s.client.call("tcp.query", a.id))
        else:
            s.note = (
                f"conn {a.id} is {r.get('state')}, not offloaded: no target holds delegated state "
                "to query (the host stack carries the connection)"
            )
    t = table("conn", str(a.id))
    order = [*_INFO_ORDER, "handles"]
    for key in [*order, *(k for k in r if k not in order)]:
        value = r.get(key)
        if key == "delegated" or _empty(value):
            continue
        if key == "handles":
            for row in _handle_rows(value):
                t.add_row(*row)
        elif key == "objects":
            for row in _object_rows(value):
                t.add_row(*row)
        elif key == "path" and isinstance(value, list):
            t.add_row(key, " → ".join(map(str, value)))
        else:
            t.add_row(key, fmt(value))
    s.out.table(t)
    shown = (LIVE_DELEGATED, live) if live is not None else (STALE_DELEGATED, r.get("delegated"))
    _delegated_table(s, *shown)
    if live is not None:
        return {**r, "delegated_live": live}
    return r


def _delegated_table(s: Session, title: str, delegated: Any) -> None:
    if _empty(delegated):
        return
    s.out.line(f"{title}:")
    t = table("", "")
    t.show_header = False
    if isinstance(delegated, dict):
        for k, v in delegated.items():
            t.add_row(f"  {k}", fmt(v))
    else:
        t.add_row("", fmt(delegated))
    s.out.table(t)


_GAUGES = ("offloads_active", "handles", "outstanding_nbls")


def _stats(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.stack_stats()
    layers: dict[str, Any] = r.get("layers", {}) or {}
    # Gauges first (the contract's three), then whatever scalar counters the layers report,
    # then the per-call counters summed: calls, and those that completed with an error status.
    extra: list[str] = []
    for m in layers.values():
        for k, v in m.items():
            if k not in _GAUGES and k not in extra and isinstance(v, int | float):
                extra.append(k)
    # a target's unsent ACKs (not calls: docs/metrics.md), a column once any layer has one
    unsent = {name: unsent_acks_cell(m) for name, m in layers.items()}
    shown = ("unsent_acks",) if any(unsent.values()) else ()
    t = table("layer", *_GAUGES, *extra, "calls", "failed", *shown)
    for name, m in layers.items():
        calls, failed = call_totals(m)
        t.add_row(
            name,
            *(fmt(m.get(g)) for g in _GAUGES),
            *(fmt(m.get(k)) for k in extra),
            str(calls),
            str(failed),
            *(unsent[name] for _ in shown),
        )
    s.out.table(t)
    tail = [f"connections {fmt(r.get('connections'))}"]
    if isinstance(r.get("rpc"), dict):
        tail.append(f"rpc {fmt(r['rpc'])}")
    s.out.line(" · ".join(tail))
    shards = r.get("shards")
    if isinstance(shards, list) and shards:
        st = table("shard", "state", "connections", "rpc clients", *_GAUGES)
        for p in shards:
            parts = (p.get("layers") or {}).values()
            st.add_row(
                fmt(p.get("shard")),
                fmt(p.get("state")),
                fmt(p.get("connections")),
                fmt((p.get("rpc") or {}).get("clients")),
                *(fmt(sum(int(m.get(g) or 0) for m in parts)) for g in _GAUGES),
            )
        s.out.table(st)
    return r


def _metrics(s: Session, a: argparse.Namespace) -> Any:
    r = str(s.client.call("stack.metrics"))
    if not s.out.json_mode:
        s.out.file.write(r if r.endswith("\n") else r + "\n")
        s.out.file.flush()
    return r


def _one_shot_note(s: Session, what: str, a: argparse.Namespace) -> None:
    if not s.interactive:
        s.note = _ONE_SHOT_NOTE.format(what=what, cmd=a.command + " ...")


#: What a connect that was asked to offload says when the connection stayed in the host stack,
#: from a daemon whose tcp.info does not say why (no `offload_refused`).
_STAYED_IN_HOST = (
    "conn {conn} stays in the host stack: the offload at connect was refused (a host_event "
    "fault, a NIC with no room or out of service, ...); it works unoffloaded, and "
    "`offload {conn}` tries again and answers why if it is refused"
)
#: The same, with why, from tcp.info's `offload_refused` (rpc.md `tcp.info`).
_REFUSED_BECAUSE = (
    "conn {conn} stays in the host stack: the offload at connect was refused{by}: {reason}; "
    "it works unoffloaded, and `offload {conn}` tries again"
)


def _connect(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_connect(a.host, a.port, offload=a.offload, target=a.target)
    s.made("connection", r, a.name)
    s.out.line(f"conn {r}")
    notes = []
    info = _stayed_in_host(s, r) if a.offload else None
    if info is not None:
        refused = info.get("offload_refused")
        if isinstance(refused, dict) and refused.get("reason"):
            layer = refused.get("layer")
            by = f" by {layer}" if layer else ""
            notes.append(_REFUSED_BECAUSE.format(conn=r, by=by, reason=refused["reason"]))
        else:
            notes.append(_STAYED_IN_HOST.format(conn=r))
    _one_shot_note(s, f"conn {r}", a)
    if s.note:
        notes.append(s.note)
    s.note = "; ".join(notes) or None
    return r


def _stayed_in_host(s: Session, conn: int) -> dict[str, Any] | None:
    """tcp.info of a connection connect asked to offload, if it is in the host stack, else
    None. tcp.connect answers the id either way (rpc.md `tcp.connect`: a refused offload leaves
    the connection in the host stack) and waits for the offload's outcome first, so tcp.info's
    state is that outcome, and its `offload_refused` says why."""
    try:
        info = s.client.tcp_info(conn)
    except ChimneyError:
        return None  # gone already (the peer reset it): nothing to say about its offload
    return dict(info) if info.get("state") == "host" else None


def _listen(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_listen(a.host, a.port, offload=a.offload)
    s.made("listener", r, a.name)
    s.out.line(f"listener {r}")
    _one_shot_note(s, f"listener {r}", a)
    return r


def _listener_info(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_listener_info(a.id)
    s.out.line(f"listener {a.id}: {r.get('host')}:{r.get('port')} pending {r.get('pending')}")
    return r


def _accept(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_accept(a.id, a.timeout_ms)
    s.made("connection", r, a.name)
    s.out.line(f"conn {r}")
    _one_shot_note(s, f"conn {r}", a)
    return r


def _offload(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_offload(a.id)
    path = " → ".join(str(p) for p in r.get("path", []))
    s.out.line(f"conn {a.id}: {r.get('state')}" + (f" via {path}" if path else ""))
    return r


def _upload(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_upload(a.id)
    s.out.line(f"conn {a.id}: {r.get('state')}")
    return r


def _send(s: Session, a: argparse.Namespace) -> Any:
    text = " ".join(a.data) if a.data else None
    if sum(x is not None for x in (text, a.hex, a.file)) != 1:
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
        assert text is not None
        data = text.encode("utf-8")
    r = s.client.tcp_send(a.id, data)
    s.out.line(f"sent {_n_bytes(r)} (acknowledged)")
    return r


def _recv(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_recv(a.id, a.max, a.timeout_ms, waitall=a.waitall)
    if a.raw:
        s.out.raw(r)
    elif not s.out.json_mode:
        _print_data(s.out, r, a.hex)
    return r


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
            out.line(f"{_n_bytes(len(data))}: {text}")
            return
    out.line(f"{_n_bytes(len(data))} (hex): {data.hex()}")


def _n_bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _disconnect(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_disconnect(a.id, a.abortive)
    s.out.line(r)
    return r


def _close(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_close(a.id)
    s.out.line(f"conn {a.id}: closed")
    return r


def _list(s: Session, a: argparse.Namespace) -> Any:
    r = s.client.tcp_list()
    s.out.line(" ".join(map(str, r)) if r else "(no connections)")
    return r


def _query(s: Session, a: argparse.Namespace) -> Any:
    r = dict(s.client.call("tcp.query", a.id))
    _delegated_table(s, LIVE_DELEGATED, r)
    return r


def _update(s: Session, a: argparse.Namespace) -> Any:
    changes = dict(a.keys)
    r = s.client.call("tcp.update", a.id, changes)
    # `object=neighbor` / `object=path` says whose variables they are, it is not one of them
    what = changes.get("object")
    names = " ".join(k for k, _ in a.keys if k != "object")
    label = f"{what} " if isinstance(what, str) and what != "tcp" else ""
    hop = changes.get("NextHop")
    if what == "path" and isinstance(hop, str):
        # a next-hop change (spec §3.4 (b)): says where the path went
        others = " ".join(k for k, _ in a.keys if k not in ("object", "NextHop"))
        also = f" and updated {others}" if others else ""
        s.out.line(f"conn {a.id}: moved path to next hop {hop}{also}: {fmt(r)}")
        return r
    s.out.line(f"conn {a.id}: updated {label}{names}: {fmt(r)}")
    return r


def _no_hops(s: Session, conn: int, nbl: Any, traced: int) -> str:
    """Why a trace has nothing to show: most often a connection the host stack carries, which
    makes no NDIS calls (never offloaded, or uploaded when its NIC failed)."""
    if traced:
        what = f"none of its {traced} hops carries {'an NBL' if nbl is None else f'NBL {nbl}'}"
    else:
        what = "no hops"
    try:
        state = s.client.tcp_info(conn).get("state")
    except NotFound:
        state = None  # closed and gone: its trace is all there is
    if state is None or state == "offloaded":
        return f"conn {conn}: {what}"
    mode = "in host mode" if state == "host" else str(state)
    return (
        f"conn {conn}: {what}; it is {mode}, not offloaded, so the host stack carries it without "
        "NDIS calls (if a fault failed or took out its NIC, `chimneyctl fault list` shows it)"
    )


def _trace(s: Session, a: argparse.Namespace) -> Any:
    hops = s.client.trace_get(a.id, a.limit)
    traced = len(hops)
    nbl = a.nbl
    if nbl == "first":
        nbl = next((h["nbl"] for h in hops if h.get("nbl") is not None), None)
    if a.nbl is not None:  # `first` of a trace without an NBL keeps nothing, not every hop
        hops = [h for h in hops if nbl is not None and h.get("nbl") == nbl]
    if not hops:
        why = _no_hops(s, a.id, nbl, traced if a.nbl is not None else 0)
        if a.svg or a.mermaid:  # an empty figure looks like a drawing that went wrong
            raise EmptyTrace(f"trace: nothing to draw, no file written: {why}")
        s.out.line("(no hops)")
        s.note = why
        return hops
    if a.svg or a.mermaid:
        from . import ctl_trace

        layers = s.client.stack_info().get("layers", [])
        order = [str(layer.get("name")) for layer in layers]
        lower = {str(layer.get("name")): layer.get("lower") or [] for layer in layers}
        lanes = ctl_trace.lanes_for(hops, order, lower)
        title = f"conn {a.id}: {ctl_trace.route(lanes)}" + (f" · NBL {nbl}" if nbl else "")
        result: dict[str, Any] = {"hops": len(hops), "lanes": ctl_trace.columns(lanes)}
        if a.svg:
            with open(a.svg, "w", encoding="utf-8") as f:
                f.write(ctl_trace.render_svg(hops, lanes, title))
            s.out.line(f"wrote {a.svg}: {len(hops)} hops, lanes {' | '.join(result['lanes'])}")
            result["svg"] = a.svg
        if a.mermaid:
            text = ctl_trace.render_mermaid(hops, lanes, title)
            if a.mermaid != "-":
                with open(a.mermaid, "w", encoding="utf-8") as f:
                    f.write(text)
                s.out.line(f"wrote {a.mermaid}: {len(hops)} hops")
                result["mermaid_file"] = a.mermaid
            elif not s.out.json_mode:
                s.out.file.write(text)
                s.out.file.flush()
            result["mermaid"] = text
        return result
    with_event = any(h.get("event") is not None for h in hops)
    t = table(*HOP_COLUMNS, *(["event"] if with_event else []))
    t0 = hops[0].get("t_ns") if hops else None
    for h in hops:
        t.add_row(*hop_cells(h, t0, with_event))
    columns = terminal_columns(s.out)
    if columns is not None and not s.out.json_mode and table_width(t) > columns:
        # a terminal narrower than the table: watch's rows, which fit it, not rich's shrinking,
        # which left no room for seq, time, layer or handles at 80 columns
        layout = WatchLayout(columns)
        s.out.line(layout.heading())
        for h in hops:
            s.out.line(layout.row(hop_cells(h, t0, True)))
        return hops
    s.out.table(t)
    return hops


def _watch(s: Session, a: argparse.Namespace) -> Any:
    from .ctl_live import watch

    return watch(s, a.id, a.interval, a.new)


def _top(s: Session, a: argparse.Namespace) -> Any:
    from .ctl_live import top

    return top(s, a.interval, a.conns, a.once)


def admin_hint(s: Session) -> str | None:
    """Why `subscribe '*'` will show only this client's connections, if it will: no token
    given, a daemon with no token at all (it accepts any and makes no one admin), or a token
    that is not the admin one."""
    own = (
        "subscribe '*' sees only the connections this client makes (a one-shot subscribe makes "
        "none)"
    )
    if s.args.token is None:
        return (
            f"without the admin token, {own}; give --token ADMIN_TOKEN or set CHIMNEY_TOKEN "
            "(the daemon's from CHIMNEYD_ADMIN_TOKEN or admin_token under [rpc])"
        )
    rpc = s.client.stack_info().get("rpc")
    if isinstance(rpc, dict) and rpc.get("auth") is False:
        return (
            f"this daemon has no admin token, so the token given makes no one admin and {own}; "
            "start it with CHIMNEYD_ADMIN_TOKEN=ADMIN_TOKEN in its environment (or admin_token "
            "under [rpc]) and give that token"
        )
    # the admin token lists every connection: fewer listed than open means not admin
    open_conns = s.client.stack_stats().get("connections")
    if isinstance(open_conns, int) and open_conns > len(s.client.tcp_list()):
        return (
            f"the token given is not the daemon's admin token, so {own}; the admin token is the "
            "daemon's CHIMNEYD_ADMIN_TOKEN or admin_token under [rpc] (one with only rpc.token "
            "has none)"
        )
    return None


def _subscribe(s: Session, a: argparse.Namespace) -> Any:
    # without the admin token '*' is this client's connections only (docs/rpc.md,
    # events.subscribe): the line says so rather than "all connections". Asked before the
    # subscribe, so that no event arrives ahead of the line.
    hint = admin_hint(s) if a.id == "*" else None
    r = s.client.events_subscribe(a.id)
    # in run/shell the connections the script makes are this client's, and their events come:
    # the hint is for a one-shot subscribe, which makes none
    if hint and not s.interactive:
        _stderr(f"hint: {hint}")
    what = "all connections" if a.id == "*" else f"conn {a.id}"
    if hint:
        what = "this client's own connections (no admin token)"
    s.out.line(f"subscribed to {what}")
    if s.interactive and a.count is None:
        return r  # run/shell: later events print as they arrive
    s.result(r)
    s.wait_events(a.count, a.timeout_ms)
    return SHOWN


def _events(s: Session, a: argparse.Namespace) -> Any:
    return s.wait_events(a.count, a.timeout_ms)


def _sleep(s: Session, a: argparse.Namespace) -> Any:
    if s._client is not None:
        # Read while sleeping, so events are not held up behind the pause.
        deadline = time.monotonic() + a.seconds
        while (left := deadline - time.monotonic()) > 0:
            note = s._client.wait_notification(left)
            if note is not None:
                _print_event(s.out, note)
    else:
        time.sleep(a.seconds)
    return None


def _fault(s: Session, a: argparse.Namespace) -> Any:
    if a.fault_cmd == "kinds":
        return _fault_kinds(s)
    c = s.client
    if a.fault_cmd == "inject":
        keys = dict(a.keys)
        fid = c.fault_inject(a.kind, **keys)
        s.injected.append(fid)
        s.out.line(f"fault {fid}")
        if a.kind in LAYER_FAULTS:
            if s.interactive:
                s.lasting[fid] = str(keys.get("layer"))  # named as the run/shell ends
            else:
                s.note = _stays(fid, keys.get("layer"))
        return fid
    if a.fault_cmd == "clear":
        r = c.fault_clear(a.id)
        s.injected = [] if a.id == "*" else [f for f in s.injected if f != a.id]
        s.lasting = {} if a.id == "*" else {f: v for f, v in s.lasting.items() if f != a.id}
        s.out.line("cleared")
        return r
    used = bool(getattr(a, "used", False))
    faults = c.fault_list(used=used)
    if not faults:
        s.out.line("(no faults)")
        return faults
    t = table("id", "kind", "keys", *(("active", "hit") if used else ()))
    shown_apart = ("id", "kind", "active", *_HITS, *(f"{k}_dropped" for k in _HITS))
    for f in faults:
        keys = {k: v for k, v in f.items() if k not in shown_apart}
        more = (fmt(f.get("active")), _hits(f)) if used else ()
        t.add_row(fmt(f.get("id")), fmt(f.get("kind")), fmt(keys), *more)
    s.out.table(t)
    return faults


#: what a fault says it hit (fault.list `used`), and what names each hit: a raise_next's bugs
#: the handler that raised, a fail_next's failures the call it failed
_HITS = {"raised": "handler", "failed": "call"}


def _hits(fault: dict[str, Any]) -> str:
    """What a raise_next's bugs or a fail_next's failures hit: `layer handler/call: conns`
    per hit."""
    key = next((k for k in _HITS if k in fault), None)
    if key is None:
        return ""
    lines = []
    for r in fault[key]:
        conns = list(r.get("conns") or [])
        total = int(r.get("conns_total", len(conns)))
        shown = ", ".join(map(str, conns[:8])) + (f" (+{total - 8})" if total > 8 else "")
        lines.append(f"{r.get('layer')} {r.get(_HITS[key])}: {shown or 'no connection'}")
    dropped = int(fault.get(f"{key}_dropped", 0))
    if dropped:
        lines.append(f"(+{dropped} more not kept)")
    return "\n".join(lines) or "(not yet)"


def _fault_kinds(s: Session) -> Any:
    t = table("kind", "keys", "example")
    for k in FAULT_KINDS.values():
        t.add_row(k.name, k.keys, k.example)
    s.out.table(t)
    s.out.line("aliases: " + ", ".join(f"{a} = {n}" for a, n in FAULT_ALIASES.items()))
    return [
        {
            "kind": k.name,
            "required": list(k.required),
            "optional": list(k.optional),
            "what": k.what,
            "example": k.example,
        }
        for k in FAULT_KINDS.values()
    ]


def _completion(s: Session, a: argparse.Namespace) -> Any:
    from .completion import script

    text = script(a.shell)
    if not s.out.json_mode:
        s.out.file.write(text)
        s.out.file.flush()
    return text


HANDLERS: dict[str, Handler] = {
    "ping": _ping,
    "info": _info,
    "stats": _stats,
    "metrics": _metrics,
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
    "query": _query,
    "update": _update,
    "trace": _trace,
    "watch": _watch,
    "subscribe": _subscribe,
    "events": _events,
    "sleep": _sleep,
    "fault": _fault,
    "top": _top,
    "completion": _completion,
}


# ================================================================================================
# running
# ================================================================================================
def _refs(a: argparse.Namespace) -> Iterator[tuple[str, Any, str]]:
    """(attribute, value, what it must name) of every id a command takes."""
    if a.command == "fault":
        return
    if hasattr(a, "id"):
        yield "id", a.id, "listener" if a.command in LISTENER_ID else "connection"


def _resolve_refs(s: Session, a: argparse.Namespace) -> None:
    for attr, value, want in _refs(a):
        setattr(a, attr, s.resolve(value, want))
    if a.command == "fault" and a.fault_cmd == "inject":
        a.keys = [
            (k, s.resolve(Ref(v), "connection") if k == "conn" and isinstance(v, str) else v)
            for k, v in a.keys
        ]


def _error_doc(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Exit status and the JSON `error` of an exception a command raised."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, {"symbol": "USAGE", "message": str(exc)}
    if isinstance(exc, RpcError):
        symbol = exc.message.split(":", 1)[0] if ":" in exc.message else exc.symbol
        return EXIT_ERROR, {"code": exc.wire_code, "symbol": symbol, "message": exc.message}
    symbols: dict[type[BaseException], str] = {
        ConnectionLost: "CONNECTION_LOST",
        CallTimeout: "CALL_TIMEOUT",
        ProtocolError: "PROTOCOL_ERROR",
        EmptyTrace: "EMPTY_TRACE",
        EventsTimeout: "EVENTS_TIMEOUT",
    }
    symbol = symbols.get(type(exc), "ERROR" if isinstance(exc, ChimneyError) else "OS_ERROR")
    return EXIT_ERROR, {"symbol": symbol, "message": str(exc)}


def _report(s: Session, line: str, exc: BaseException, note: str | None = None) -> int:
    status, error = _error_doc(exc)
    if s.out.json_mode:
        s.out.json(_envelope(line, False, error=error, note=note))
    else:
        _stderr(f"error: {exc}")
        if note:
            _stderr(f"hint: {note}")
    return status


def _not_found_hint(s: Session, a: argparse.Namespace) -> str | None:
    if s.interactive or s.args.token is not None or a.command == "fault" or not hasattr(a, "id"):
        return None
    return (
        "a one-shot chimneyctl sees only what it makes itself: connections belong to the RPC "
        "client that opened them; use `run`/`shell`, or --token with the admin token"
    )


def _connect_hint(s: Session) -> str | None:
    """Why chimneyctl could not reach the daemon, if it never did: it is not running there."""
    if s._client is not None:
        return None  # connected once: the daemon went away, or the call was cut off
    env = os.environ.get("CHIMNEY_RPC")
    source = " (it came from CHIMNEY_RPC)" if env is not None and env == s.args.rpc else ""
    return (
        f"is chimneyd running at that address{source}? Start it with `make run` (or "
        "`chimneyd`), or give its address with --rpc ADDR or CHIMNEY_RPC"
    )


def _error_hint(s: Session, a: argparse.Namespace, exc: ChimneyError) -> str | None:
    """What to do about an error the daemon answered, where a person can act on it."""
    if isinstance(exc, Denied) and "authenticate first" in str(exc):
        return (
            "this daemon wants a token: give --token TOKEN or set CHIMNEY_TOKEN (its "
            "configuration's token or admin_token under [rpc])"
        )
    if isinstance(exc, Denied) and "bad token" in str(exc):
        return "the token given (--token or CHIMNEY_TOKEN) is neither of the daemon's tokens"
    if isinstance(exc, ConnectFailed) and a.command == "connect" and "refused" in str(exc):
        address = f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}"
        return (
            f"nothing listens on {address}: start a peer there first, e.g. "
            f"`chimney-peer echo --listen {address}` (as in the README's tour)"
        )
    if isinstance(exc, RpcTimeout) and a.command == "recv" and a.waitall:
        # the daemon words a waitall read's timeout as a plain one's ("nothing arrived"), but
        # bytes short of MAX may have come: they stay for the next read (rpc.md, tcp.recv)
        return (
            f"--waitall waits for all {a.max} bytes: fewer came within {a.timeout_ms:g} ms "
            f"(maybe none); what came is not lost, the next recv of conn {a.id} reads it"
        )
    return None


def _execute(s: Session, a: argparse.Namespace, line: str) -> int:
    """Run one parsed command; print its result or error. Returns its exit status."""
    s.out.json_mode = s.json_default or bool(getattr(a, "json", False))
    s.line, s.note = line, None
    try:
        _resolve_refs(s, a)
        result = HANDLERS[a.command](s, a)
        if result is not SHOWN:
            if s.out.json_mode:
                s.out.json(_envelope(line, True, result=result, note=s.note))
            elif s.note:
                _stderr(f"note: {s.note}")
        return EXIT_OK
    except NotFound as exc:
        return _report(s, line, exc, _not_found_hint(s, a))
    except ConnectionLost as exc:
        return _report(s, line, exc, _connect_hint(s))
    except BrokenPipeError:
        raise  # our stdout is gone (the RPC socket's errors are ConnectionLost): nothing to tell
    except ChimneyError as exc:
        return _report(s, line, exc, _error_hint(s, a, exc))
    except (UsageError, OSError) as exc:
        return _report(s, line, exc)
    finally:
        s.print_events()


def _split_name(words: list[str]) -> tuple[list[str], str | None]:
    """`connect HOST PORT as NAME` → the command's words and NAME."""
    if len(words) >= 3 and words[-2] == "as":
        if words[0] not in NAMING:
            raise UsageError(f"{words[0]}: only {', '.join(NAMING)} take `as NAME`")
        name = words[-1]
        if not _NAME_RE.fullmatch(name):
            raise UsageError(f"as {name!r}: a name starts with a letter or _ (e.g. c1)")
        return words[:-2], name
    return words, None


def _parse_line(parser: argparse.ArgumentParser, line: str) -> argparse.Namespace:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"{line!r}: {exc}") from None
    if words and words[0] in ONE_SHOT_ONLY:
        raise UsageError(f"{words[0]!r} runs only on its own, not inside run/shell")
    words, name = _split_name(words)
    args = parser.parse_args(words)
    args.name = name
    _check(args)
    return args


def _check(a: argparse.Namespace) -> None:
    """What argparse cannot check, before anything runs: a fault's kind and keys."""
    if a.command == "fault" and a.fault_cmd == "inject" and not a.unchecked:
        try:
            a.kind = check_fault(a.kind, dict(a.keys))
        except FaultSpecError as exc:
            raise UsageError(str(exc)) from None


def _check_names(script: Sequence[tuple[str, argparse.Namespace]]) -> None:
    """Every name a run uses is made by an earlier command (checked before anything runs)."""
    names: dict[str, str] = {}
    made_conn = False
    for line, a in script:
        uses = [(v, want) for _, v, want in _refs(a)]
        if a.command == "fault" and a.fault_cmd == "inject":
            uses += [
                (Ref(v), "connection") for k, v in a.keys if k == "conn" and isinstance(v, str)
            ]
        for value, want in uses:
            if not isinstance(value, Ref):
                continue
            if value == LAST:
                if not made_conn:
                    raise UsageError(f"{line!r}: {LAST} before any connect or accept")
            elif names.get(value) != want:
                raise UsageError(
                    f"{line!r}: {value!r} is not a {want} named by an earlier command "
                    f"(e.g. `connect HOST PORT as {value}`)"
                )
        if a.command in NAMING:
            made_conn = made_conn or NAMING[a.command] == "connection"
            if a.name is not None:
                names[a.name] = NAMING[a.command]


def _run(s: Session, commands: Sequence[str]) -> int:
    parser = build_line_parser()
    script = []
    for text in commands:  # check the whole script before touching the daemon
        try:
            script.append((text, _parse_line(parser, text)))
        except UsageError as exc:
            return _report(s, text, exc)
        except _HelpShown as exc:
            return exc.status
    try:
        _check_names(script)
    except UsageError as exc:
        return _report(s, "run", exc)
    try:
        for line, args in script:
            status = _execute(s, args, line)
            if status != EXIT_OK:
                s.clear_injected("stopped at an error")
                return status
    except KeyboardInterrupt:
        s.clear_injected("was interrupted")
        raise
    except BrokenPipeError:
        _silence_stdout()  # what clear_injected says goes nowhere, but the faults are cleared
        s.clear_injected("lost its stdout")
        raise
    return EXIT_OK


def _shell_help(s: Session, parser: argparse.ArgumentParser) -> None:
    rows = command_summary(parser)
    if s.out.json_mode:
        s.out.json(_envelope("help", True, result=[{"command": n, "help": h} for n, h in rows]))
        return
    width = max(len(n) for n, _ in rows)
    lines = ["commands (COMMAND -h for its arguments; exit, quit or Ctrl-D ends):"]
    lines += [f"  {n.ljust(width)}  {h}" for n, h in rows]
    lines.append(
        f"names: `connect HOST PORT as c` then `send c hi`; {LAST} is the last connection made"
    )
    s.out.file.write("\n".join(lines) + "\n")
    s.out.file.flush()


def _shell(s: Session, stdin: IO[str]) -> int:
    parser = build_line_parser()
    tty = stdin.isatty()
    worst = EXIT_OK
    while True:
        if tty:
            s.out.file.write("chimney> ")
            s.out.file.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text in ("exit", "quit"):
            break
        if text in ("help", "?"):
            _shell_help(s, parser)
            continue
        try:
            args = _parse_line(parser, text)
        except UsageError as exc:
            worst = max(worst, _report(s, text, exc))
            continue
        except _HelpShown:
            continue
        worst = max(worst, _execute(s, args, text))
    return worst  # the worst status of any line: 0, 1 (an error) or 2 (a usage error)


#: Global options that take a value (skipped to find where the command starts).
_VALUE_OPTIONS = ("--rpc", "--token", "--timeout")


def _command_line(argv: Sequence[str]) -> str:
    """The command as typed, without chimneyctl's global options (the JSON `command`)."""
    words = list(argv)
    i = 0
    while i < len(words):
        w = words[i]
        if w in _VALUE_OPTIONS:
            i += 2
        elif w == "--json" or w.startswith(tuple(o + "=" for o in _VALUE_OPTIONS)):
            i += 1
        else:
            break
    return shlex.join(w for w in words[i:] if w != "--json")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what is still buffered
    does not fail again on the closed pipe (the recipe of the Python docs, signal module)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured in-process): nothing is flushed to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `chimneyctl`; returns the exit status (also when called in-process)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader of stdout left (`| head`): no traceback, no "error:" for a pipe that is
        # done with us, and nothing more is printed
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    json_mode = "--json" in argv
    try:
        args = parser.parse_args(argv)
        _check(args)
        if args.command in SESSION_ONLY:
            raise UsageError(
                f"{args.command!r} runs only inside run/shell, after a subscribe there: alone it "
                "has subscribed to nothing (`chimneyctl subscribe ID|'*' --count N` waits for "
                "events alone)"
            )
    except UsageError as exc:
        out = Output(json_mode, sys.stdout)
        return _report(Session(argparse.Namespace(), out), _command_line(argv), exc)
    except _HelpShown as exc:
        return exc.status
    args.name = None
    json_mode = bool(args.json)
    session = Session(args, Output(json_mode, sys.stdout), json_default=json_mode)
    try:
        if args.command in ("run", "shell"):
            session.interactive = True
            if args.command == "run":
                status = _run(session, args.commands)
            else:
                status = _shell(session, sys.stdin)
            session.note_lasting()
            return status
        return _execute(session, args, _command_line(argv))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
