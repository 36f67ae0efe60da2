"""structlog set-up: JSON lines off a terminal, console rendering on one; context from contextvars.

Event names are stable snake_case (`rpc_client_connected`), details are fields. Context such as
the RPC client, the connection id or the layer is bound once with `structlog.contextvars` and
merged into every line logged under it. Records of the standard `logging` module (asyncio's own
warnings, for one) go through the same renderer, so every line has one shape.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


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

    def reopen(self) -> None:
        # open the new file first: if that fails, logging goes on to the old one
        new = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        old, self.stream = self.stream, new
        old.close()

    def close(self) -> None:
        self.stream.close()


_file: ReopenableFile | None = None


def use_console(fmt: str, stream: Any) -> bool:
    """`auto` renders for people only on a terminal; anything read by programs gets JSON."""
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def setup_logging(fmt: str = "auto", level: str = "info", file: str = "") -> None:
    """Configure structlog (and the stdlib root logger) once for the process.

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
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out is sys.stderr)
        tail: list[Any] = [renderer]
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [structlog.processors.dict_tracebacks, renderer]
    min_level = LEVELS.get(level.lower(), logging.INFO)
    structlog.configure(
        processors=[*shared, *tail],
        # the level check is compiled into the bound logger: a filtered call is one no-op
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    _bridge_stdlib(shared, tail, out, min_level)


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
