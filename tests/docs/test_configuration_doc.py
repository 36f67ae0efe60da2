"""docs/configuration.md against chimneyd/config.py: the page lists exactly the keys of the
configuration dataclasses, each with its real default, and its full example is the default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

import pytest

from chimneyd import config
from tests.docs.mdcheck import DOCS, load

CONFIG_MD = DOCS / "configuration.md"
SECTIONS = {
    "rpc": config.RpcConfig,
    "log": config.LogConfig,
    "engine": config.EngineConfig,
    "layer": config.LayerConfig,
    "web": config.WebConfig,
    "metrics": config.MetricsConfig,
    "daemon": config.DaemonConfig,
}
REQUIRED = "(required)"


def code_defaults() -> dict[str, Any]:
    """`section.key` → default, from the dataclasses (REQUIRED for a field without one)."""
    out: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = REQUIRED
            out[f"{section}.{f.name}"] = list(value) if isinstance(value, tuple) else value
    return out


def documented() -> dict[str, str]:
    """`section.key` → the default cell as written."""
    rows = re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \| ([^|]+?) \|", CONFIG_MD.read_text(), re.M)
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), f"a key is listed twice: {keys}"
    return dict(rows)


def test_the_page_lists_exactly_the_configuration_keys() -> None:
    doc, code = set(documented()), set(code_defaults())
    assert not code - doc, f"keys in chimneyd/config.py missing from the page: {sorted(code - doc)}"
    assert not doc - code, f"keys on the page that config.py does not have: {sorted(doc - code)}"


def test_each_documented_default_is_the_real_one() -> None:
    code = code_defaults()
    for key, cell in documented().items():
        if code[key] == REQUIRED:
            assert cell == REQUIRED, f"{key} has no default: write {REQUIRED}"
            continue
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: default {cell!r} not code"
        value = tomllib.loads(f"v = {cell.strip('`')}")["v"]
        want = code[key]
        if isinstance(want, list) and isinstance(value, str):
            value = [value]  # a single address may be written as a string
        assert value == want and type(value) is type(want), f"{key}: page {value!r}, code {want!r}"


def test_the_sections_are_headings() -> None:
    headings = {h.text for h in load(CONFIG_MD).headings}
    for section in ("[rpc]", "[log]", "[engine]", "[[layer]]"):
        assert section in headings


def test_the_full_example_is_the_embedded_default(tmp_path: Any) -> None:
    doc = load(CONFIG_MD)
    blocks = [t.content for t in doc.fences() if t.info.strip() == "toml"]
    assert len(blocks) == 1
    path = tmp_path / "chimneyd.toml"
    path.write_text(blocks[0])
    assert config.load_config(path) == config.load_config(None)
    raw = tomllib.loads(blocks[0])
    written = {f"{s}.{k}" for s in SECTIONS if s != "layer" for k in raw[s]}
    assert written == {k for k in code_defaults() if not k.startswith("layer.")}


def test_every_command_line_option_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    from chimneyd.daemon import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    options = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    text = CONFIG_MD.read_text()
    missing = sorted(o for o in options if f"`{o}" not in text)
    assert not missing, f"chimneyd options missing from docs/configuration.md: {missing}"


def test_listen_help_names_every_address_form_and_what_it_replaces(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`chimneyd --help` says of --listen what the page's table does: the IPv6 form too, and
    that it replaces `rpc.listen` rather than adding to it."""
    from chimneyd.daemon import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text[text.index("options:") :]  # past the usage line
    listen = options[options.index("--listen ADDR") : options.index("--check-config")]
    for form in ("host:port", "[::1]:port", "unix:/path", "replaces rpc.listen"):
        assert form in listen, (form, listen)
    assert "[::1]:port" in CONFIG_MD.read_text()  # the page names the same form
