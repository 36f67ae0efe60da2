"""The compiled build's I/O path reads its objects the way mypyc makes cheap.

Under callgrind on the compiled build (`make bench COMPILED=1 ARGS="--profile instructions"`,
README "The compiled build") a verified echo round spent ~28,000 instructions in
`PyObject_GetAttr`, the generic path, from compiled code. Every attribute read of an object of
an interpreted module's class is generic (~200 instructions): the broker read six of
`NdisOffloadHandle` per NBL sent down, so `chimneyd/ndis/handles.py` is compiled.

These tests read the sources (both builds ship them), so they hold on either build.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]
LISTED = ROOT / "deploy" / "compiled-modules.txt"


def _compiled_modules() -> list[str]:
    lines = [ln.strip() for ln in LISTED.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_the_offload_handle_is_compiled() -> None:
    # the broker reads the handle's context, binding, trace and ids for every NBL sent down
    assert "chimneyd/ndis/handles.py" in _compiled_modules()
