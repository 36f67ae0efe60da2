"""docs/metrics.md against a running engine: every key of `stack.stats` and every metric of
`stack.metrics` is described, and nothing described is missing from them."""

from __future__ import annotations

import re
from typing import Any

from tests.docs.mdcheck import DOCS, load

METRICS_MD = DOCS / "metrics.md"
DYNAMIC = {"calls"}  # maps whose keys are call names: described as one entry


def key_paths(value: Any, layers: set[str], prefix: str = "") -> set[str]:
    if not isinstance(value, dict) or prefix.rsplit(".", 1)[-1] in DYNAMIC:
        return {prefix}
    out: set[str] = set()
    for key, sub in value.items():
        name = "<layer>" if key in layers else key
        out |= key_paths(sub, layers, f"{prefix}.{name}" if prefix else name)
    return out


async def live_stats() -> tuple[dict[str, Any], str]:
    from chimneyd.config import RpcConfig
    from chimneyd.engine import start_engine
    from chimneyd.observe.metrics import prometheus_text
    from chimneyd.rpc.server import RpcServer

    engine = await start_engine()
    try:
        stats = engine.stats()
        stats["rpc"] = RpcServer(engine, RpcConfig()).rpc_stats()
        return stats, prometheus_text(stats)
    finally:
        await engine.shutdown(1.0)


def documented(section: str) -> dict[str, str]:
    rows = load(METRICS_MD).section_named(section, source=True)
    return dict(re.findall(r"^\| `([^`]+)` \| ([a-z]+) \|", "\n".join(rows), re.M))


async def test_every_stats_key_is_described() -> None:
    stats, _ = await live_stats()
    layers = set(stats["layers"])
    live = key_paths(stats, layers)
    described = set(documented("`stack.stats`"))
    assert not live - described, (
        f"stack.stats keys not in docs/metrics.md: {sorted(live - described)}"
    )
    assert not described - live, (
        f"docs/metrics.md keys stack.stats lacks: {sorted(described - live)}"
    )


async def test_every_prometheus_metric_is_described() -> None:
    _, text = await live_stats()
    live = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert documented("`stack.metrics`") == live
