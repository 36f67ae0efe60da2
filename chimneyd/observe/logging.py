"""structlog set-up: JSON lines off a terminal, console rendering on one; context from contextvars."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _ReopenableFile:
    """A log file that SIGHUP can reopen (for log rotation)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: TextIO = open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def reopen(self) -> None:
        old = self.stream
        self.stream = open(self.path, "a", buffering=1)  # noqa: SIM115
        old.close()


_file: _ReopenableFile | None = None


def setup_logging(fmt: str = "auto", level: str = "info", file: str = "") -> None:
    """Configure structlog once for the process."""
    global _file
    out: Any = sys.stderr
    if file:
        _file = _ReopenableFile(file)
        out = _file
    console = fmt == "console" or (fmt == "auto" and not file and sys.stderr.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=out is sys.stderr))
    else:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            _LEVELS.get(level.lower(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


def reopen_logs() -> None:
    """SIGHUP: reopen the log file, if logging to one."""
    if _file is not None:
        _file.reopen()
