"""docs/ndis-surface.md against the spec notes, the code and the tests.

What a passing run guarantees about the page:

1. Every function of docs/spec.md §7 (the grouped rows read one function each, with the
   `Protocol…` handlers of its completion column), every status code of §5.5, every event type
   of §5.1 and every indication code of §5.4 has exactly one row; the §7 names read from
   docs/spec.md must equal `SPEC_FUNCTIONS` below, so a change to §7 comes here on purpose.
2. Every location (`path` `Class.method` or `path` `function`) names a file that exists and a
   function defined in that file itself (imported and looked up in the class's or module's own
   namespace: not inherited, not imported from elsewhere).
3. Every named test exists: a `def` of that name in that file — a `test_…` under tests/, or a
   check registered in the conformance suite under chimneyd/testing/conformance.
4. The named tests really run the code of their row. The named tests run in a separate pytest
   with every location of the page wrapped to note each call: which location, for which layer
   kind (the layer among its arguments: `self`, or the caller of a broker function) and with
   which enum values. Then, for each row: each location in a layer kind's column ran for that
   kind in one of the row's tests; each NDIS location ran; for a `Ndis…` function a layer calls,
   the broker function was called by each kind the row names — and never, in any test run, by a
   kind the row leaves out; for a status, event or code row, the broker carried that very value
   and each location that takes the value as an argument was given it. Every test run passed.
5. Rows marked "not emulated: …" or "no test yet: …" are counted; the counts must match the
   summary line of the page, and they are listed as a warning in the test output.

It does not judge whether a test *asserts* enough about the function — reading the test does.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from chimneyd.compiled import is_compiled
from chimneyd.ndis.status import IndicateOffloadEvent, NdisStatus, TcpOffloadEventType
from tests.docs.mdcheck import DOCS, ROOT, load
from tests.docs.surface_probe import resolve

SURFACE_MD = DOCS / "ndis-surface.md"
SPEC_MD = DOCS / "spec.md"

#: The functions of spec §7, one per function (the grouped rows expanded, the `Protocol…`
#: completion handlers of its last column included).
SPEC_FUNCTIONS = [
    "NdisSetOptionalHandlers", "NdisMGetOffloadHandlers",
    "NdisInitiateOffload", "MiniportInitiateOffload",
    "NdisTerminateOffload", "MiniportTerminateOffload",
    "NdisUpdateOffload", "MiniportUpdateOffload",
    "NdisInvalidateOffload", "MiniportInvalidateOffload",
    "NdisQueryOffloadState", "MiniportQueryOffload",
    "NdisMInitiateOffloadComplete", "NdisMTerminateOffloadComplete",
    "NdisMUpdateOffloadComplete", "NdisMInvalidateOffloadComplete",
    "NdisMQueryOffloadStateComplete",
    "ProtocolInitiateOffloadComplete", "ProtocolTerminateOffloadComplete",
    "ProtocolUpdateOffloadComplete", "ProtocolInvalidateOffloadComplete",
    "ProtocolQueryOffloadComplete",
    "NdisOffloadTcpSend", "MiniportTcpOffloadSend",
    "NdisOffloadTcpReceive", "MiniportTcpOffloadReceive",
    "NdisOffloadTcpDisconnect", "MiniportTcpOffloadDisconnect",
    "NdisOffloadTcpForward", "MiniportTcpOffloadForward",
    "NdisOffloadTcpReceiveReturn", "MiniportTcpOffloadReceiveReturn",
    "NdisTcpOffloadSendComplete", "NdisTcpOffloadReceiveComplete",
    "NdisTcpOffloadDisconnectComplete", "NdisTcpOffloadForwardComplete",
    "ProtocolTcpOffloadSendComplete", "ProtocolTcpOffloadReceiveComplete",
    "ProtocolTcpOffloadDisconnectComplete", "ProtocolTcpOffloadForwardComplete",
    "NdisTcpOffloadReceiveHandler", "ProtocolTcpOffloadReceiveIndicate",
    "NdisTcpOffloadEventHandler", "ProtocolTcpOffloadEvent",
    "NdisMOffloadEventIndicate", "ProtocolIndicateOffloadEvent",
    "NdisMIndicateStatusEx", "NdisMIndicateReceiveNetBufferLists",
]  # fmt: skip
#: The ordinary NDIS handlers §7 sends two calls to without naming them; rows of their own.
ORDINARY_HANDLERS = ["ProtocolStatusEx", "ProtocolReceiveNetBufferLists"]

#: Table columns: the layer kinds by their column title, and the kind each is as a `Layer`.
KINDS = {"host": "host", "pass-through IM": "passthrough", "MUX": "mux", "target": "target"}
HEADER = ["NDIS", *KINDS, "shown by"]
#: The first column's title of a table of values, and the enum its values belong to.
VALUE_TABLES: dict[str, type[Any]] = {
    "status code": NdisStatus,
    "event type": TcpOffloadEventType,
    "indication code": IndicateOffloadEvent,
}
NOT_EMULATED = "not emulated:"
NO_TEST = "no test yet:"
CONFORMANCE = "chimneyd/testing/conformance/"
#: The probe runs a few dozen unit, conformance and integration tests in one pytest: the first
#: test that needs it waits for the whole run (seconds here; room for a slow machine).
PROBE_TIMEOUT = 480
probing = pytest.mark.timeout(PROBE_TIMEOUT + 60)
_LOCATION = re.compile(r"`([\w/]+\.py)` `([\w.]+)`")
_TEST = re.compile(r"`([\w/]+\.py)::(\w+)`")


# ================================================================================================
# the page
# ================================================================================================
@dataclass(frozen=True)
class Location:
    path: str
    qualname: str

    @property
    def key(self) -> str:
        return f"{self.path}::{self.qualname}"

    def __str__(self) -> str:
        return f"`{self.path}` `{self.qualname}`"


@dataclass
class Row:
    name: str
    table: str  # the title of the table's first column: "function", "event type", …
    line: int
    ndis: list[Location] = field(default_factory=list)
    layers: dict[str, list[Location]] = field(default_factory=dict)  # layer kind → locations
    tests: list[str] = field(default_factory=list)  # "path::name"
    gap: str = ""

    @property
    def enum(self) -> type[Any] | None:
        return VALUE_TABLES.get(self.table)

    @property
    def value(self) -> str | None:
        """The enum member the probe notes for this row's value (`NdisStatus.NDIS_STATUS_…`)."""
        return f"{self.enum.__name__}.{self.name}" if self.enum else None

    def locations(self) -> list[Location]:
        return [*self.ndis, *(loc for locs in self.layers.values() for loc in locs)]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@cache
def surface_rows() -> list[Row]:
    doc = load(SURFACE_MD)
    rows: list[Row] = []
    header: list[str] | None = None
    for i, line in enumerate(doc.lines):
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if cells[1:] == HEADER:
            header = cells
            continue
        if header is None or set(line) <= set("|-: "):
            continue
        assert len(cells) == len(header), f"ndis-surface.md:{i + 1}: {len(cells)} cells"
        name = re.fullmatch(r"`(\w+)`", cells[0])
        assert name, f"ndis-surface.md:{i + 1}: the first cell is not one `name`"
        row = Row(name.group(1), header[0], i + 1)
        row.ndis = _locations(cells[1], row)
        row.layers = {
            KINDS[title]: _locations(c, row) for title, c in zip(KINDS, cells[2:6], strict=True)
        }
        shown = cells[6]
        if shown.startswith((NOT_EMULATED, NO_TEST)):
            row.gap = shown
        else:
            row.tests = [f"{p}::{n}" for p, n in _TEST.findall(shown)]
            assert "<br>".join(f"`{t}`" for t in row.tests) == shown, (
                f"ndis-surface.md:{i + 1}: 'shown by' is not a <br> list of `path::test`"
            )
        rows.append(row)
    return rows


def _locations(cell: str, row: Row) -> list[Location]:
    if cell == "—":
        return []
    found = [Location(p, q) for p, q in _LOCATION.findall(cell)]
    assert "<br>".join(str(loc) for loc in found) == cell, (
        f"ndis-surface.md:{row.line}: a cell is not `—` nor a <br> list of `path` `name`: {cell}"
    )
    return found


def rows_by_name() -> dict[str, Row]:
    return {row.name: row for row in surface_rows()}


# ================================================================================================
# docs/spec.md: the names its §7, §5.1, §5.4 and §5.5 give
# ================================================================================================
def _table_rows(lines: list[str]) -> list[list[str]]:
    rows = [_cells(line) for line in lines if line.startswith("|")]
    return rows[2:]  # without the header and its delimiter row


def spec_functions() -> set[str]:
    """The full function names in §7's function column and completion column."""
    names = set()
    for cells in _table_rows(load(SPEC_MD).section("7")):
        for cell in (cells[0], cells[-1]):
            for span in re.findall(r"`([^`]+)`", cell):
                ident = re.match(r"(Ndis|Miniport|Protocol)\w*", span)
                if ident and "…" not in span:
                    names.add(ident.group(0))
    return names


def spec_values() -> dict[str, list[str]]:
    """The status codes of §5.5, event types of §5.1, indication codes of §5.4, by table."""
    doc = load(SPEC_MD)
    return {
        "status code": [c[0].strip("`") for c in _table_rows(doc.section("5.5"))],
        "event type": [c[1].strip("`") for c in _table_rows(doc.section("5.1"))],
        "indication code": re.findall(r"`(\w+) = \d+`", "\n".join(doc.section("5.4"))),
    }


# ================================================================================================
# 1. every name has a row
# ================================================================================================
def test_spec_function_table_is_the_list_kept_here() -> None:
    assert spec_functions() == set(SPEC_FUNCTIONS)
    assert len(SPEC_FUNCTIONS) == len(set(SPEC_FUNCTIONS)) == 48


def test_every_function_status_event_and_code_has_one_row() -> None:
    names = [row.name for row in surface_rows()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"more than one row: {duplicates}"
    by_name = rows_by_name()
    wanted = {n: "function" for n in [*SPEC_FUNCTIONS, *ORDINARY_HANDLERS]}
    for table, values in spec_values().items():
        assert values, f"found no {table} in docs/spec.md"
        wanted.update({v: table for v in values})
    missing = sorted(set(wanted) - set(by_name))
    assert not missing, f"no row in docs/ndis-surface.md for {missing}"
    extra = sorted(set(by_name) - set(wanted))
    assert not extra, f"rows for names spec §5.1, §5.4, §5.5 and §7 do not list: {extra}"
    wrong = [f"{n} ({by_name[n].table})" for n, t in wanted.items() if by_name[n].table != t]
    assert not wrong, f"rows in the wrong table: {wrong}"


def test_every_value_is_a_member_of_its_enum() -> None:
    """The probe notes enum values by member name: a row's value must be one."""
    for row in surface_rows():
        if row.enum is not None:
            assert hasattr(row.enum, row.name), f"{row.name} is not a {row.enum.__name__}"


# ================================================================================================
# 2. every location exists; 3. every test exists
# ================================================================================================
def test_every_location_is_a_function_defined_in_its_file() -> None:
    problems = []
    for loc in sorted({loc for row in surface_rows() for loc in row.locations()}, key=str):
        path = ROOT / loc.path
        if not path.is_file():
            problems.append(f"{loc}: no such file")
            continue
        *outer, name = loc.qualname.split(".")
        text = path.read_text(encoding="utf-8")
        if not re.search(rf"^\s*def {name}\(", text, re.M) or not all(
            re.search(rf"^class {c}\b", text, re.M) for c in outer
        ):
            problems.append(f"{loc}: no `def {name}` (in `class {'.'.join(outer)}`) there")
            continue
        try:
            _, _, obj = resolve(loc.path, loc.qualname)
        except (ImportError, AttributeError, KeyError) as e:
            problems.append(f"{loc}: not defined there ({e!r})")
            continue
        if not callable(obj):
            problems.append(f"{loc}: not a function")
    assert not problems, "\n".join(problems)


@cache
def conformance_checks() -> dict[str, str]:
    """Check name → role, of the checks registered in the conformance suite."""
    from chimneyd.testing.conformance import layer_kind_checks

    return {check.name: check.role for check in layer_kind_checks()}


def _defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
        for node in tree.body
    )


def test_every_named_test_exists() -> None:
    problems = []
    for ref in sorted({t for row in surface_rows() for t in row.tests}):
        path_part, name = ref.split("::")
        path = ROOT / path_part
        if not path.is_file():
            problems.append(f"{ref}: no such file")
        elif not _defines(path, name):
            problems.append(f"{ref}: no `def {name}` at the top of the file")
        elif path_part.startswith(CONFORMANCE):
            if conformance_checks().get(name) != path.stem:
                problems.append(f"{ref}: not a registered {path.stem} check of the suite")
        elif not (path_part.startswith("tests/") and name.startswith("test_")):
            problems.append(f"{ref}: not a test under tests/ nor a conformance check")
    assert not problems, "\n".join(problems)


def test_rows_without_tests_say_why() -> None:
    for row in surface_rows():
        where = f"ndis-surface.md:{row.line} `{row.name}`"
        if row.gap.startswith(NOT_EMULATED):
            assert not row.locations(), f"{where}: marked not emulated, yet names code"
        elif row.gap.startswith(NO_TEST):
            assert row.locations(), f"{where}: no test yet for what? it names no code"
        else:
            assert row.tests, f"{where}: no test and no reason"
            assert any(row.layers.values()), f"{where}: no layer kind takes part"
        if row.gap:
            assert len(row.gap.partition(":")[2].strip()) >= 10, f"{where}: say why"


# ================================================================================================
# 4. the named tests run the code of their rows
# ================================================================================================
Note = tuple[str, str, tuple[str, ...]]


def _node_ids(ref: str) -> list[str]:
    """The pytest node ids a test named on the page runs as."""
    path, name = ref.split("::")
    if not path.startswith(CONFORMANCE):
        return [ref]
    from tests.conformance.test_layer_kinds import CASES

    return [
        f"tests/conformance/test_layer_kinds.py::test_kind_passes_check[{case.id}]"
        for case in CASES
        if getattr(case.values[1], "name", None) == name
    ]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every named test once with every location instrumented (tests/docs/surface_probe.py);
    the notes of each named test (all its parameters, all layer kinds of a check)."""
    tmp = tmp_path_factory.mktemp("surface")
    targets = tmp / "targets.json"
    out = tmp / "calls.json"
    locations = sorted({loc for row in surface_rows() for loc in row.locations()}, key=str)
    targets.write_text(json.dumps([[loc.path, loc.qualname] for loc in locations]))
    # a test that does not exist is test_every_named_test_exists's to report, not the run's
    refs = sorted(
        ref
        for ref in {t for row in surface_rows() for t in row.tests}
        if (ROOT / ref.split("::")[0]).is_file()
        and _defines(ROOT / ref.split("::")[0], ref.split("::")[1])
    )
    ids = {ref: _node_ids(ref) for ref in refs}
    env = dict(os.environ)
    env.update(
        SURFACE_PROBE_TARGETS=str(targets),
        SURFACE_PROBE_OUT=str(out),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    )
    # the compiled build's callers never see a wrapper: the probe runs on the sources
    first = ["-p", "tests.docs.source_only"] if is_compiled() else []
    argv = [sys.executable, "-m", "pytest", *first, "-p", "tests.docs.surface_probe", "-p"]
    argv += ["no:cacheprovider", "-q", "--no-header", *sorted({i for v in ids.values() for i in v})]
    run = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT
    )
    assert out.exists(), f"the probe run wrote nothing:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["build"] == "python", "the probe ran compiled code: it would have seen no call"
    notes: dict[str, set[Note]] = {}
    outcomes: dict[str, str] = {}
    for ref, node_ids in ids.items():
        ran = [
            n for n in data["outcomes"] if any(n == i or n.startswith(i + "[") for i in node_ids)
        ]
        outcomes[ref] = "not run" if not ran else "passed"
        for n in ran:
            if data["outcomes"][n] != "passed":
                outcomes[ref] = f"{n} {data['outcomes'][n]}"
        notes[ref] = {(k, kind, tuple(m)) for n in ran for k, kind, m in data["calls"].get(n, [])}
    every = {(k, kind, tuple(m)) for calls in data["calls"].values() for k, kind, m in calls}
    return {"notes": notes, "outcomes": outcomes, "every": every, "log": run.stdout[-3000:]}


@probing
def test_every_named_test_ran_and_passed(probe: dict[str, Any]) -> None:
    failed = {ref: why for ref, why in probe["outcomes"].items() if why != "passed"}
    assert not failed, f"{failed}\n{probe['log']}"


def _ran(notes: set[Note], key: str, kind: str | None, value: str | None, given: bool) -> bool:
    """A note of `key` (for `kind`, any kind when None) that fits `value`: with `given`, the
    call carried `value`; else it carried it, or no value of that enum at all (a function
    specific to the value, like the target's `peer_reset` for `TcpIndicateAbort`)."""
    for k, k_kind, members in notes:
        if k != key or (kind is not None and k_kind != kind):
            continue
        if value is None or value in members:
            return True
        family = value.split(".")[0] + "."
        if not given and not any(m.startswith(family) for m in members):
            return True
    return False


@probing
def test_each_rows_tests_run_its_code_for_each_layer_kind(probe: dict[str, Any]) -> None:
    problems = []
    for row in surface_rows():
        notes: set[Note] = set().union(*(probe["notes"].get(t, set()) for t in row.tests))
        where = f"`{row.name}`"
        for loc in row.ndis:
            if not _ran(notes, loc.key, None, row.value, False):
                problems.append(f"{where}: no test of its row ran {loc}")
        for kind, locs in row.layers.items():
            for loc in locs:
                if not _ran(notes, loc.key, kind, row.value, False):
                    problems.append(f"{where}: no test of its row ran {loc} for a {kind}")
        broker = f"chimneyd/ndis/broker.py::Ndis.{row.name}"
        if row.enum is None and any(loc.key == broker for loc in row.ndis):
            for kind, locs in row.layers.items():
                if locs and not _ran(notes, broker, kind, None, True):
                    problems.append(f"{where}: no test of its row saw a {kind} call it")
        carrier = row.ndis[0] if row.value is not None and row.ndis else None
        if carrier is not None and not _ran(notes, carrier.key, None, row.value, True):
            problems.append(f"{where}: no test of its row made {carrier} carry it")
    assert not problems, "\n".join(problems)


@probing
def test_no_layer_kind_calls_a_function_its_row_leaves_out(probe: dict[str, Any]) -> None:
    """Over every test the probe ran: a kind seen calling a broker function has a cell in the
    function's row (the rows list every kind that makes the call)."""
    problems = []
    for row in surface_rows():
        broker = f"chimneyd/ndis/broker.py::Ndis.{row.name}"
        if row.enum is not None or not any(loc.key == broker for loc in row.ndis):
            continue
        callers = {kind for key, kind, _ in probe["every"] if key == broker}
        left_out = sorted(k for k in callers & set(KINDS.values()) if not row.layers[k])
        if left_out:
            problems.append(f"`{row.name}`: called by {left_out}, whose cells are `—`")
    assert not problems, "\n".join(problems)


# ================================================================================================
# 5. the gaps, counted and shown
# ================================================================================================
class SurfaceGaps(UserWarning):
    """Rows of docs/ndis-surface.md that are not emulated or have no test yet."""


def test_gaps_are_counted_in_the_summary_and_listed() -> None:
    rows = surface_rows()
    not_emulated = [r for r in rows if r.gap.startswith(NOT_EMULATED)]
    untested = [r for r in rows if r.gap.startswith(NO_TEST)]
    shown = len(rows) - len(not_emulated) - len(untested)
    summary = (
        f"**{len(rows)} rows: {shown} emulated and shown by tests, {len(not_emulated)} not "
        f"emulated, {len(untested)} without a test yet.**"
    )
    text = " ".join(SURFACE_MD.read_text(encoding="utf-8").split())
    if summary not in text:
        pytest.fail(f"the summary line of docs/ndis-surface.md should read {summary}")
    if not_emulated or untested:
        listed = "; ".join(f"{r.name}: {r.gap}" for r in [*not_emulated, *untested])
        warnings.warn(
            SurfaceGaps(
                f"docs/ndis-surface.md: {len(not_emulated)} not emulated, {len(untested)} "
                f"without a test — {listed}"
            ),
            stacklevel=1,
        )
