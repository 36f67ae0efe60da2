"""A pytest plugin that records which chimneyd functions each test runs, for test_ndis_surface.

Loaded with `-p tests.docs.surface_probe` in a separate pytest run. `SURFACE_PROBE_TARGETS`
names a JSON file listing `[path, qualname]` pairs (`chimneyd/ndis/broker.py`,
`Ndis.NdisInitiateOffload`); at configure time each is replaced, where it is defined, by a
wrapper that notes every call made during a test: the target, the kind of the layer it ran for
(the first `Layer` among its arguments: `self` of a layer method, the caller of a broker
function) and the enum members among its arguments (`TcpOffloadEventType.TcpIndicateAbort`).
At the end the notes and each test's outcome go to the JSON file `SURFACE_PROBE_OUT`:
`{"calls": {nodeid: [[path::qualname, kind, [enum, ...]], ...]}, "outcomes": {nodeid: str},
"build": "python"}` (`"compiled"` if the code it wrapped was not what ran).

Wrapping happens before any test builds a layer, so the handlers layers register with NDIS
(`NdisSetOptionalHandlers`) are the wrappers; methods a subclass inherits are recorded with the
subclass's kind. Nothing else changes: each wrapper calls the original with the same arguments.
"""

from __future__ import annotations

import enum
import functools
import importlib
import json
import os
from collections.abc import Callable, Generator
from typing import Any

import pytest

from chimneyd.compiled import build_name
from chimneyd.ndis.broker import Layer

Note = tuple[str, str, tuple[str, ...]]

_current: set[Note] | None = None
_calls: dict[str, set[Note]] = {}
_outcomes: dict[str, str] = {}


def module_of(path: str) -> str:
    """`chimneyd/ndis/broker.py` → `chimneyd.ndis.broker`."""
    return path.removesuffix(".py").replace("/", ".")


def resolve(path: str, qualname: str) -> tuple[Any, str, Any]:
    """(owner, attribute name, the object as defined there) for `qualname` in module `path`;
    KeyError when the owner does not define it itself (inherited or imported elsewhere)."""
    owner: Any = importlib.import_module(module_of(path))
    *outer, name = qualname.split(".")
    for part in outer:
        owner = getattr(owner, part)
    return owner, name, vars(owner)[name]


def _wrap(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def probe(*args: Any, **kwargs: Any) -> Any:
        if _current is not None:
            kind = next((a.kind for a in args if isinstance(a, Layer)), "")
            members = tuple(
                f"{type(a).__name__}.{a.name}" for a in args if isinstance(a, enum.Enum)
            )
            _current.add((key, kind, members))
        return fn(*args, **kwargs)

    return probe


def pytest_configure(config: pytest.Config) -> None:
    targets = os.environ.get("SURFACE_PROBE_TARGETS")
    if not targets:
        return
    with open(targets, encoding="utf-8") as f:
        pairs = json.load(f)
    for path, qualname in pairs:
        owner, name, fn = resolve(path, qualname)
        setattr(owner, name, _wrap(f"{path}::{qualname}", fn))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    global _current
    _current = _calls.setdefault(item.nodeid, set())
    try:
        yield
    finally:
        _current = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # the call's outcome, unless a setup or teardown failed (or was skipped)
    counts = report.when == "call" or report.outcome != "passed"
    if counts and _outcomes.get(report.nodeid) in (None, "passed"):
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("SURFACE_PROBE_OUT")
    if not out:
        return
    calls = {
        node: sorted([k, kind, list(m)] for k, kind, m in notes) for node, notes in _calls.items()
    }
    with open(out, "w", encoding="utf-8") as f:
        # which build ran: the wrappers see no call made by compiled code (source_only.py)
        json.dump({"calls": calls, "outcomes": _outcomes, "build": build_name()}, f)
