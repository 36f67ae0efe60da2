"""docs/faults.md against the daemon: every fault kind it accepts has a section, and every kind
the page describes is accepted; every chimney-soak schedule name is explained."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.docs.mdcheck import DOCS, ROOT, load

FAULTS_MD = DOCS / "faults.md"


def _strings_compared_to_kind(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name):
            if node.left.id != "kind":
                continue
            for comp in node.comparators:
                if isinstance(comp, ast.Constant) and isinstance(comp.value, str):
                    found.add(comp.value)
                elif isinstance(comp, ast.Tuple | ast.Set | ast.List):
                    found.update(
                        e.value
                        for e in comp.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    )
    return found


def _fault_tables(tree: ast.Module) -> set[str]:
    """Keys of module-level dicts whose name says they hold fault kinds (or their aliases)."""
    found = set()
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any("FAULT" in n.upper() for n in names) and isinstance(value, ast.Dict):
            found.update(
                k.value
                for k in value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
    return found


def daemon_fault_kinds() -> set[str]:
    """The kinds (and aliases) `fault.inject` accepts: from a fault registry module
    (`chimneyd.faults.KINDS` / `ALIASES`) where there is one, else read from chimneyd's source —
    the strings compared with `kind` in a `fault_inject` function, or the keys of a table."""
    try:
        from chimneyd import faults  # type: ignore[attr-defined]

        registry = getattr(faults, "KINDS", None)
        if isinstance(registry, dict) and registry:
            return set(registry) | set(getattr(faults, "ALIASES", {}))
    except ImportError:
        pass
    kinds: set[str] = set()
    for path in sorted((ROOT / "chimneyd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kinds |= _fault_tables(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "fault" in node.name:
                kinds |= _strings_compared_to_kind(node)
    if not kinds:
        pytest.fail(
            "found no fault kinds in chimneyd: fault.inject no longer compares `kind` with string "
            "literals nor keeps a *FAULT* table; teach tests/docs/test_faults_doc.py where they are"
        )
    return kinds


def documented_kinds() -> set[str]:
    doc = load(FAULTS_MD)
    return {
        m.group(1)
        for h in doc.headings
        if h.level == 2 and (m := re.match(r"^## `([a-z_]+)`$", doc.lines[h.line]))
    }


def alias_rows() -> dict[str, str]:
    doc = load(FAULTS_MD)
    rows = doc.section_named("Aliases")
    return dict(re.findall(r"^\| `([a-z_]+)` \| `([a-z_]+)` \|", "\n".join(rows), re.M))


def test_every_daemon_kind_is_documented() -> None:
    known = documented_kinds() | set(alias_rows())
    missing = sorted(daemon_fault_kinds() - known)
    assert not missing, f"fault kinds the daemon accepts and docs/faults.md lacks: {missing}"


def test_each_kind_has_keys_and_outcome() -> None:
    doc = load(FAULTS_MD)
    for kind in documented_kinds():
        text = "\n".join(doc.section_named(f"`{kind}`", source=True))
        assert "| key | type | required | meaning |" in text, f"faults.md {kind}: no key table"
        assert "**What happens**" in text, f"faults.md {kind}: say what it does"
        if kind != "delay":
            assert "**Outcome**" in text or "outcome required" in text, (
                f"faults.md {kind}: say what the spec requires"
            )


def test_every_alias_maps_to_a_documented_kind() -> None:
    aliases = alias_rows()
    assert {"nic_failure": "target_failure", "stall": "stall_peer"}.items() <= aliases.items()
    assert set(aliases.values()) <= documented_kinds()


def test_every_soak_schedule_name_is_explained() -> None:
    from chimney_client import soak

    missing = sorted({*soak.FAULT_KINDS, *soak.faults.ALIASES} - set(alias_rows()))
    assert not missing, f"chimney-soak --faults names missing from the Aliases table: {missing}"


async def test_the_daemon_accepts_every_documented_kind() -> None:
    """Behaviour, not source: a kind described here must not be 'unknown' to the engine."""
    from chimneyd.api import EngineError
    from chimneyd.engine import start_engine

    engine = await start_engine()
    try:
        for kind in [*sorted(documented_kinds()), "no_such_kind"]:
            try:
                fid = engine.fault_inject({"kind": kind})
            except EngineError as err:
                unknown = "unknown fault kind" in str(err)
                assert unknown == (kind == "no_such_kind"), f"{kind}: {err}"
            else:  # a kind that needs no key at all
                engine.fault_clear(fid)
    finally:
        await engine.shutdown(1.0)


def test_page_is_linked_from_the_rpc_reference() -> None:
    assert "(faults.md)" in Path(DOCS / "rpc.md").read_text()
