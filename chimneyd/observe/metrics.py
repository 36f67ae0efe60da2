"""`stack.stats` as Prometheus text exposition (design §7), without a client library."""

from __future__ import annotations

import re
from typing import Any

_SAFE = re.compile(r"[^a-zA-Z0-9_]")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def prometheus_text(stats: dict[str, Any]) -> str:
    """Per-layer gauges and call counters, RPC and connection gauges."""
    lines: list[str] = []
    gauges = ("offloads_active", "handles", "outstanding_nbls")
    for gauge in gauges:
        lines.append(f"# TYPE chimney_{gauge} gauge")
        for layer, st in stats.get("layers", {}).items():
            lines.append(f'chimney_{gauge}{{layer="{_label(layer)}"}} {st[gauge]}')
    for counter in ("bytes_sent", "bytes_received"):
        lines.append(f"# TYPE chimney_{counter}_total counter")
        for layer, st in stats.get("layers", {}).items():
            lines.append(f'chimney_{counter}_total{{layer="{_label(layer)}"}} {st.get(counter, 0)}')
    lines.append("# TYPE chimney_calls_total counter")
    for layer, st in stats.get("layers", {}).items():
        for key, n in st.get("calls", {}).items():
            call, _, status = key.partition("/")
            labels = f'layer="{_label(layer)}",call="{_label(_SAFE.sub("_", call))}"'
            if status:
                labels += f',status="{_label(status)}"'
            lines.append(f"chimney_calls_total{{{labels}}} {n}")
    lines.append("# TYPE chimney_connections gauge")
    lines.append(f"chimney_connections {stats.get('connections', 0)}")
    lines.append("# TYPE chimney_tasks gauge")
    lines.append(f"chimney_tasks {stats.get('tasks', 0)}")
    rpc = stats.get("rpc", {})
    lines.append("# TYPE chimney_rpc_clients gauge")
    lines.append(f"chimney_rpc_clients {rpc.get('clients', 0)}")
    lines.append("# TYPE chimney_rpc_in_flight gauge")
    lines.append(f"chimney_rpc_in_flight {rpc.get('in_flight', 0)}")
    return "\n".join(lines) + "\n"
