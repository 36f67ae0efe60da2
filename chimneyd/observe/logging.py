"""structlog set-up: JSON lines off a terminal, console rendering on one; context from contextvars.

Event names are stable snake_case (`rpc_client_connected`), details are fields. Context such as
the RPC client, the connection id or the layer is bound once with `structlog.contextvars` and
merged into every line logged under it. Records of the standard `logging` module (asyncio's own
warnings, for one) go through the same renderer, so every line has one shape.

Two rules keep logging from ever hurting the daemon:
- a log line never raises into its caller: a failed write (a closed pipe — `chimneyd | head`, a
  dead log shipper —, a full disk) is counted (`write_errors`) and the line dropped; on a closed
  pipe the descriptor is pointed at /dev/null, so nothing later (not even the interpreter's
  flush at exit) fails on it again;
- no field is logged unbounded (`bound_fields`): strings, byte strings and containers are cut to
  a few KB and a few levels of nesting, whatever a client managed to put in them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
import structlog.tracebacks

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

MAX_STRING = 1024  # characters kept of one string (or bytes shown of one byte string)
MAX_ITEMS = 32  # items kept of one list, tuple, set or map
MAX_DEPTH = 4  # levels of nesting kept; deeper containers are summarised
MAX_FIELD = 4096  # characters one field may spend in all
MAX_FIELDS = 64  # fields kept of one event
# a rendered traceback is longer and deeper by nature, and still bounded
EXCEPTION_LIMITS = (16 * 1024, 8, 64 * 1024)  # (string, depth, field)
EXCEPTION_KEYS = frozenset({"exception", "exc_info"})


# -- writes that never raise ---------------------------------------------------------------------

_write_errors = 0


def write_errors() -> int:
    """Log writes that failed (and were dropped) since the process started."""
    return _write_errors


class SafeStream:
    """The stream log lines go to; a failed write is counted and dropped, never raised.

    A line goes out in one write: structlog's PrintLogger writes the line and its newline
    apart, and on an unbuffered stream (PYTHONUNBUFFERED) that is two writes — the shards of a
    daemon, which share one stderr or log file, then interleave each other's lines."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._held = ""  # the start of a line whose newline has not come yet

    def write(self, text: str) -> int:
        if not text.endswith("\n"):
            self._held += text
            return len(text)
        line, self._held = self._held + text, ""
        try:
            self.stream.write(line)
            return len(text)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._failed(exc)
            return 0

    def flush(self) -> None:
        if self._held:
            self.write("\n")  # a line never finished: it goes out with its newline
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc)

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (OSError, ValueError):
            return False

    def _failed(self, exc: Exception) -> None:
        global _write_errors
        _write_errors += 1
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
            _silence(self.stream)


def _silence(stream: Any) -> None:
    """Nobody reads this pipe any more, and nobody will: send its descriptor to /dev/null, so
    later writes (and the buffered bytes flushed at exit) go nowhere instead of failing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


class ReopenableFile:
    """A log file that SIGHUP can reopen (after logrotate moved it away)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def reopen(self) -> None:
        # open the new file first: if that fails, logging goes on to the old one
        new = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        old, self.stream = self.stream, new
        with contextlib.suppress(OSError):
            old.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()


# -- fields that stay small --------------------------------------------------------------------


def bound_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: every field cut to a bounded size and depth (see the limits
    above). Plain numbers and short strings, nearly every field, pass untouched."""
    if len(event_dict) > MAX_FIELDS:
        for key in list(event_dict)[MAX_FIELDS:]:
            del event_dict[key]
        event_dict["fields_dropped"] = True
    for key, value in event_dict.items():
        t = type(value)
        if t is bool or t is float or value is None:
            continue
        if (t is str and len(value) <= MAX_STRING) or (t is int and value.bit_length() <= 64):
            continue
        if key in EXCEPTION_KEYS:
            if key == "exc_info" and not (t is str or isinstance(value, list | dict)):
                continue  # an exception object, rendered (and bounded) by a later processor
            string, depth, field = EXCEPTION_LIMITS
        else:
            string, depth, field = MAX_STRING, MAX_DEPTH, MAX_FIELD
        event_dict[key] = _Bounder(string, depth, field).bound(value, 0)
    if any(len(str(k)) > MAX_STRING for k in event_dict):
        for key in [k for k in event_dict if len(str(k)) > MAX_STRING]:
            event_dict[str(key)[:64] + "..."] = event_dict.pop(key)
    return event_dict


class _Bounder:
    """A bounded copy of one value; `left` is what the field may still spend."""

    __slots__ = ("depth", "left", "string")

    def __init__(self, string: int, depth: int, field: int) -> None:
        self.string = string
        self.depth = depth
        self.left = field

    def bound(self, value: Any, level: int) -> Any:
        if self.left <= 0:
            return "..."
        t = type(value)
        if t is bool or t is float or value is None:
            return value
        if t is int:
            return value if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
        if isinstance(value, str):
            return self._cut(value)
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value[: min(self.string, self.left) // 4 + 1])
            shown = self._cut(repr(raw))
            return shown if len(raw) >= len(value) else f"{shown}... ({len(value)} bytes)"
        if isinstance(value, dict):
            if level >= self.depth:
                return f"<map of {len(value)} items>"
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= MAX_ITEMS or self.left <= 0:
                    out["..."] = f"{len(value) - i} more items"
                    break
                out[self._cut(k if isinstance(k, str) else _safe_repr(k), 64)] = self.bound(
                    v, level + 1
                )
            return out
        if isinstance(value, list | tuple | set | frozenset):
            if level >= self.depth:
                return f"<{t.__name__} of {len(value)} items>"
            items: list[Any] = []
            for i, v in enumerate(value):
                if i >= MAX_ITEMS or self.left <= 0:
                    items.append(f"... {len(value) - i} more items")
                    break
                items.append(self.bound(v, level + 1))
            return items
        return self._cut(_safe_repr(value))

    def _cut(self, text: str, limit: int | None = None) -> str:
        keep = min(limit or self.string, max(self.left, 0))
        self.left -= min(len(text), keep) + 8
        if len(text) <= keep:
            return text
        return f"{text[:keep]}...(+{len(text) - keep} chars)"


def _safe_repr(value: Any) -> str:
    """repr() that cannot raise (a deep or broken object) and is cut before it is kept."""
    try:
        text = repr(value)
    except Exception as exc:  # RecursionError, or a __repr__ that fails
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= 4 * MAX_STRING else text[: 4 * MAX_STRING]


# -- set-up ------------------------------------------------------------------------------------

_file: ReopenableFile | None = None


def use_console(fmt: str, stream: Any) -> bool:
    """`auto` renders for people only on a terminal; anything read by programs gets JSON."""
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


#: A traceback as a dict, without the frames' locals (structlog's `dict_tracebacks` shows
#: them): a layer's frames hold its inbox and NBL chains, whose pretty-printed reprs were cut to
#: 80 characters anyway, and rendering them cost the daemon about 0.2 MB of RSS it never gave
#: back per logged error (60 planted bugs: x1.30 after the drain against x1.05 without).
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def setup_logging(
    fmt: str = "auto", level: str = "info", file: str = "", fields: dict[str, Any] | None = None
) -> None:
    """Configure structlog (and the stdlib root logger) once for the process. `fields` go
    into every line (a shard's number: every shard of a daemon logs to the same place).

    Raises OSError when `file` cannot be opened, before anything is changed."""
    global _file
    out: Any = sys.stderr
    new_file = ReopenableFile(file) if file else None
    if _file is not None:
        _file.close()
    _file = new_file
    if new_file is not None:
        out = new_file
    console = use_console(fmt, out)
    shared: list[Any] = [
        *([_Fields(fields)] if fields else []),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out is sys.stderr)
        # the traceback as text, so that it is bounded like every other field
        tail: list[Any] = [structlog.processors.format_exc_info, bound_fields, renderer]
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [_DICT_TRACEBACKS, bound_fields, renderer]
    min_level = LEVELS.get(level.lower(), logging.INFO)
    safe = SafeStream(out)
    structlog.configure(
        processors=[*shared, *tail],
        # the level check is compiled into the bound logger: a filtered call is one no-op
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(safe),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _bridge_stdlib(shared, tail, safe, min_level)


class _Fields:
    """structlog processor: the same fields in every line (unless the line sets them)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = dict(fields)

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
        for key, value in self.fields.items():
            event_dict.setdefault(key, value)
        return event_dict


def _bridge_stdlib(shared: list[Any], tail: list[Any], out: Any, min_level: int) -> None:
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(min_level)


def reopen() -> None:
    """SIGHUP: reopen the log file, if logging to one (a no-op on stderr)."""
    if _file is None:
        return
    try:
        _file.reopen()
    except OSError as exc:
        structlog.get_logger("chimneyd.log").error("log_reopen_failed", error=str(exc))


reopen_logs = reopen  # the earlier name
