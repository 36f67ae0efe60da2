"""Logging can never hurt the daemon: no field is logged unbounded, whatever a client put in it,
and a failed write (a closed pipe, a full disk) is counted and dropped, never raised."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from chimneyd.observe import logging as chimney_logging
from chimneyd.observe.logging import (
    MAX_FIELD,
    MAX_STRING,
    SafeStream,
    bound_fields,
    setup_logging,
    write_errors,
)


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def bounded(**fields: Any) -> dict[str, Any]:
    return dict(bound_fields(None, "info", {"event": "e", **fields}))


def size(value: Any) -> int:
    return len(json.dumps(value, default=repr))


# -- bound_fields ------------------------------------------------------------------------------


def test_ordinary_fields_pass_untouched() -> None:
    fields = {"conn": 7, "ok": True, "ratio": 0.5, "name": "nic0", "none": None, "ids": [1, 2]}
    assert bounded(**fields) == {"event": "e", **fields}


def test_a_huge_string_is_cut() -> None:
    out = bounded(detail="x" * (7 << 20))
    assert len(out["detail"]) < MAX_STRING + 40
    assert out["detail"].endswith(f"...(+{(7 << 20) - MAX_STRING} chars)")


def test_deep_nesting_is_summarised_not_recursed() -> None:
    out = bounded(spec={"kind": "delay", "pad": deep(1000)})
    assert size(out) < 400, out
    assert "<list of 1 items>" in json.dumps(out)


def test_wide_containers_and_byte_strings_are_cut() -> None:
    out = bounded(
        wide=list(range(100_000)),
        table={f"k{i}": "v" * 500 for i in range(10_000)},
        blob=b"\x00" * (8 << 20),
    )
    for key in ("wide", "table", "blob"):
        assert size(out[key]) < MAX_FIELD + 200, key
    assert out["wide"][-1] == "... 99968 more items"
    assert out["blob"].endswith(f"({8 << 20} bytes)")


def test_values_that_cannot_be_represented_do_not_raise() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    out = bounded(odd=Broken(), big=1 << 10_000, deep_tuple=tuple(deep(3000)))
    assert out["odd"] == "<unrepresentable Broken: RuntimeError>"
    assert out["big"] == "<int of 10001 bits>"
    assert size(out["deep_tuple"]) < 200


def test_too_many_fields_are_dropped() -> None:
    out = bounded(**{f"f{i}": i for i in range(1000)})
    assert len(out) <= 66 and out["fields_dropped"] is True


# -- the whole chain, into a file ----------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    config = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    level = logging.getLogger().level
    try:
        yield
    finally:
        structlog.configure(**config)
        logging.getLogger().handlers = handlers
        logging.getLogger().setLevel(level)
        chimney_logging._file = None


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_hostile_fields_make_short_lines(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "log"
    setup_logging(fmt, "info", str(path))
    log = structlog.get_logger("test")
    log.info("fault_injected", spec={"kind": "x", "pad": deep(1000)}, key="k" * (7 << 20))
    try:
        raise ValueError("y" * (7 << 20))
    except ValueError as exc:
        log.error("rpc_internal_error", exc_info=exc)
    logging.getLogger("asyncio").warning("stdlib %s", "z" * (7 << 20))
    text = path.read_text()
    assert len(text) < 64 * 1024, len(text)
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["event"] for line in lines][:2] == ["fault_injected", "rpc_internal_error"]


@pytest.mark.usefixtures("restore_logging")
def test_a_json_traceback_names_its_frames_not_their_locals(tmp_path: Path) -> None:
    """A logged error keeps where it happened (file, line, function) and leaves out the frames'
    locals: a layer's frames hold its inbox and NBL chains, whose rendering cost the daemon
    RSS it never gave back, once per error."""
    path = tmp_path / "log"
    setup_logging("json", "info", str(path))
    inbox = [("a message", i) for i in range(10_000)]
    try:
        raise RuntimeError(f"a bug with {len(inbox)} messages waiting")
    except RuntimeError as exc:
        structlog.get_logger("test").error("layer_failed", exc_info=exc)
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    (exc_dict,) = line["exception"]
    assert exc_dict["exc_type"] == "RuntimeError"
    (frame,) = exc_dict["frames"]
    assert frame["name"] == "test_a_json_traceback_names_its_frames_not_their_locals"
    assert frame["lineno"] > 0 and frame["filename"].endswith("test_log_safety.py")
    assert "locals" not in frame or not frame["locals"], frame


# -- writes that fail ----------------------------------------------------------------------------


def test_a_closed_pipe_is_counted_then_silenced() -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w", buffering=1)
    os.close(r)  # the reader went away (`chimneyd | head` after head exits)
    safe = SafeStream(stream)
    before = write_errors()
    try:
        safe.write("one line\n")  # EPIPE: counted, and the descriptor now goes to /dev/null
        safe.flush()
        assert write_errors() == before + 1
        for _ in range(100):
            safe.write("more\n")
            safe.flush()
        assert write_errors() == before + 1  # nothing fails any more
    finally:
        stream.close()  # would raise on a pipe with no reader; /dev/null takes the flush


def test_a_closed_stream_is_counted() -> None:
    path_stream = open(os.devnull, "w")  # noqa: SIM115
    path_stream.close()
    before = write_errors()
    SafeStream(path_stream).write("x\n")
    SafeStream(path_stream).flush()
    assert write_errors() == before + 2


@pytest.mark.usefixtures("restore_logging")
def test_a_log_call_never_raises_into_its_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            raise OSError(28, "No space left on device")

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stderr", Full())
    setup_logging("json", "info")
    before = write_errors()
    structlog.get_logger("test").info("still_fine", n=1)
    logging.getLogger("asyncio").error("stdlib too")
    assert write_errors() >= before + 2


def test_a_line_goes_out_in_one_write() -> None:
    """structlog writes a line and its newline apart; the processes of a daemon of shards share
    one stderr, so each line must reach it whole, or their lines interleave."""

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    rec = Recorder()
    safe = SafeStream(rec)
    safe.write('{"event": "one"}')
    safe.write("\n")
    safe.write("two\n")
    safe.write("three")
    safe.flush()  # a line never finished goes out with its newline
    assert rec.writes == ['{"event": "one"}\n', "two\n", "three\n"]
