"""The enum members the drivers' I/O path binds as module constants are the members they name.

The hot paths read `_RESET: Final = TcpState.RESET` and the like instead of the member off its
class (test_io_path_enum_reads). A constant bound to the wrong member (`_FAILED = Phase.CLOSED`)
would pass most tests: each is read in one or two branches only. So every module-level `Final`
constant of the drivers bound to an enum member is checked here against its own name: `_X` holds
the member `X`, or a member whose name ends in `_X` (`_NOT_ACCEPTED` =
`NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED`), and is that very member at import.
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
from pathlib import Path

import chimneyd.drivers

DRIVERS = Path(chimneyd.drivers.__file__).parent


def _enum_constants() -> list[tuple[str, str, str]]:
    """(module, constant, the expression it is bound to) for each module-level
    `NAME: Final = A.B` of the drivers."""
    out: list[tuple[str, str, str]] = []
    for path in sorted(DRIVERS.rglob("*.py")):
        module = ".".join(path.relative_to(DRIVERS.parent.parent).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and "Final" in ast.unparse(node.annotation)
                and isinstance(node.value, ast.Attribute)
            ):
                out.append((module, node.target.id, ast.unparse(node.value)))
    return out


def test_the_io_path_binds_enum_constants() -> None:
    # the modules test_io_path_enum_reads relies on: a walk that finds none checks nothing
    modules = {module for module, _, _ in _enum_constants()}
    assert {
        "chimneyd.drivers.host.receive",
        "chimneyd.drivers.host.send",
        "chimneyd.drivers.passthrough",
        "chimneyd.drivers.target.receive",
        "chimneyd.drivers.target.send",
    } <= modules, modules


def test_each_enum_constant_holds_the_member_it_names() -> None:
    wrong: list[str] = []
    for module_name, name, expression in _enum_constants():
        module = importlib.import_module(module_name)
        value = getattr(module, name)
        if not isinstance(value, enum.Enum):
            continue
        member = value.name
        short = name.lstrip("_")
        # the member the source names, read off its class as the module's namespace has it
        head, *attrs = expression.split(".")
        named = functools.reduce(getattr, attrs, vars(module)[head])
        if value is not named or not (member == short or member.endswith(f"_{short}")):
            wrong.append(f"{module_name}.{name} = {expression} ({value!r})")
    assert not wrong, wrong
