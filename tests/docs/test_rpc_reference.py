"""docs/rpc.md against the server: every method of the method table has a section with its
params, result, errors and an example, and every documented method exists."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shlex
from typing import Any

import pytest

from tests.docs.mdcheck import DOCS, Document, docs_markdown, load

RPC_MD = DOCS / "rpc.md"
EXTENSIONS = {"stack.metrics", "tcp.query", "tcp.update"}
_METHOD_HEADING = re.compile(r"^### `([a-z_.]+)`$")


def method_table() -> dict[str, Any]:
    """`METHODS` of the RPC server: in chimneyd.rpc.methods, or wherever in chimneyd.rpc it went."""
    try:
        from chimneyd.rpc.methods import METHODS

        return dict(METHODS)
    except ImportError:
        pass
    import chimneyd.rpc

    for info in pkgutil.iter_modules(chimneyd.rpc.__path__):
        module = importlib.import_module(f"chimneyd.rpc.{info.name}")
        table = getattr(module, "METHODS", None)
        if isinstance(table, dict) and "ping" in table:
            return dict(table)
    pytest.fail(
        "no METHODS table in chimneyd.rpc.methods or any other chimneyd.rpc module: "
        "point tests/docs/test_rpc_reference.py at the server's method table"
    )


def documented(doc: Document) -> dict[str, list[str]]:
    """Method name → the source lines of its `### `name`` section."""
    out = {}
    in_methods = False
    for h in doc.headings:
        if h.level == 2:
            in_methods = h.text == "Methods"
        elif h.level == 3 and in_methods:
            m = _METHOD_HEADING.match(doc.lines[h.line])
            assert m, f"rpc.md: a section under Methods that is not a method: {h.text!r}"
            body = doc.lines[h.line + 1 :]
            end = next((i for i, line in enumerate(body) if re.match(r"^#{2,3} ", line)), len(body))
            out[m.group(1)] = body[:end]
    return out


@pytest.fixture(scope="module")
def sections() -> dict[str, list[str]]:
    return documented(load(RPC_MD))


def test_every_served_method_is_documented(sections: dict[str, list[str]]) -> None:
    missing = sorted(set(method_table()) - set(sections))
    assert not missing, f"methods the server has and docs/rpc.md lacks: {missing}"


def test_every_documented_method_is_served(sections: dict[str, list[str]]) -> None:
    extra = sorted(set(sections) - set(method_table()))
    assert not extra, f"methods docs/rpc.md documents and the server lacks: {extra}"


def test_the_index_lists_every_method_once(sections: dict[str, list[str]]) -> None:
    index = re.findall(r"^\| \[`([a-z_.]+)`\]\(#", RPC_MD.read_text(), re.M)
    assert sorted(index) == sorted(sections)


def test_each_method_has_params_result_errors(sections: dict[str, list[str]]) -> None:
    for name, body in sections.items():
        text = "\n".join(body)
        for part in ("**Params**", "**Result**", "**Errors**"):
            assert part in text, f"rpc.md `{name}`: no {part}"
        if name in EXTENSIONS:
            assert "**Extension.**" in text, f"rpc.md `{name}` is an extension: say so"


def _literal(text: str) -> Any:
    text = re.sub(r"\bnil\b", "None", text)
    text = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", text))
    return ast.literal_eval(text)


def test_each_method_has_a_wire_example(sections: dict[str, list[str]]) -> None:
    for name, body in sections.items():
        requests = [_literal(line[2:]) for line in body if line.startswith("→ ")]
        answers = [line for line in body if line.startswith("← [1, ")]
        ours = [r for r in requests if r[2] == name]
        assert ours, f"rpc.md `{name}`: no example request `→ [0, msgid, {name!r}, [...]]`"
        for req in requests:
            kind, msgid, _, params = req
            assert kind == 0 and isinstance(msgid, int) and isinstance(params, list), req
            assert any(a.startswith(f"← [1, {msgid}, ") for a in answers), (
                f"rpc.md `{name}`: no response to msgid {msgid}"
            )


def test_each_method_has_a_chimneyctl_example(sections: dict[str, list[str]]) -> None:
    for name, body in sections.items():
        text = "\n".join(body)
        assert "$ chimneyctl" in text or "has no command for it" in text, (
            f"rpc.md `{name}`: show the chimneyctl command, or say there is none"
        )


def test_chimneyctl_examples_parse() -> None:
    """Every `$ chimneyctl ...` line in the docs is a command line chimneyctl accepts."""
    from chimney_client import ctl

    parser, line_parser = ctl.build_parser(), ctl.build_line_parser()
    checked = 0
    for path in docs_markdown():
        for line in path.read_text().splitlines():
            m = re.match(r"^\$ (?:\S+=\S+ )*chimneyctl (.*)$", line)
            if not m:
                continue
            args = parser.parse_args(shlex.split(m.group(1)))
            if args.command == "run":
                made = False  # this run made a connection or listener
                for command in args.commands:
                    words, _ = ctl._split_name(shlex.split(command))
                    sub = line_parser.parse_args(words)
                    # the daemon never gives an id twice: a run that counts on its connection
                    # being number 1 fails on a daemon already used (rpc.md says why)
                    numeric = isinstance(getattr(sub, "id", None), int) or any(
                        w.startswith("conn=") and w[5:].isdigit() for w in words
                    )
                    assert not (made and numeric), f"{path.name}: {command!r} in {line!r}"
                    made = made or words[0] in ctl.NAMING
            checked += 1
    assert checked > 20


def test_error_table_matches_the_codes() -> None:
    from chimneyd.api import ErrorCode

    rows = dict(re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", RPC_MD.read_text(), re.M))
    assert rows == {str(int(code)): code.name for code in ErrorCode}
