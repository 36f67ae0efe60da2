"""Building the stack a configuration names: one driver layer and one task per `[[layer]]`,
bound top to bottom (design: one task and one inbox per driver layer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from chimneyd.config import EngineConfig, LayerConfig
from chimneyd.drivers.base import DriverLayer
from chimneyd.drivers.host import HostStack
from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import FindWire, OffloadTarget
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.oid import NdisTcpConnectionOffloadParameters

from .layer_task import LayerTask, LoopTimers


def build(
    ndis: Ndis,
    loop: asyncio.AbstractEventLoop,
    settings: EngineConfig,
    specs: tuple[LayerConfig, ...],
    find_wire: FindWire,
    on_error: Callable[[Layer, BaseException, Callable[..., Any], tuple[Any, ...]], None],
) -> tuple[HostStack, dict[str, DriverLayer], list[LayerTask]]:
    """The layers (by name) and their tasks; the host stack is returned apart."""
    host: HostStack | None = None
    layers: dict[str, DriverLayer] = {}
    tasks: list[LayerTask] = []
    for spec in specs:
        timers = LoopTimers(loop)
        layer: DriverLayer
        if spec.kind == "host":
            layer = host = HostStack(
                spec.name,
                ndis,
                timers,
                rx_buffer_bytes=settings.rx_buffer_bytes,
                honor_optional_retrieve=settings.honor_optional_retrieve,
                # one tick a millisecond (spec §8): the ms settings are tick counts as they are
                params=NdisTcpConnectionOffloadParameters(
                    TicksPerSecond=1000,
                    TcpPushTicks=settings.push_ticks_ms,
                    NceStaleTicks=settings.nce_stale_ms,
                ),
            )
        elif spec.kind == "passthrough":
            layer = PassthroughIm(spec.name, ndis, timers)
        elif spec.kind == "mux":
            layer = MuxIm(spec.name, ndis, timers, policy=spec.policy)
        elif spec.kind == "target":
            layer = OffloadTarget(
                spec.name,
                ndis,
                timers,
                find_wire,
                max_connections=spec.max_connections,
                ipv4=spec.ipv4,
                ipv6=spec.ipv6,
                tcp_chimney=spec.tcp_chimney,
                rx_buffer_bytes=settings.rx_buffer_bytes,
                push_ticks_ms=settings.push_ticks_ms,
                user_timeout_ms=settings.user_timeout_ms,
            )
        else:
            # config.validate refuses what the engine cannot build; this is a second guard
            raise ValueError(f"layer {spec.name}: kind {spec.kind!r} cannot be built")
        task = LayerTask(layer, loop)
        task.on_error = on_error
        timers.task = task
        tasks.append(task)
        layers[spec.name] = layer
    for spec in specs:
        for lower in spec.lower:
            ndis.bind(layers[spec.name], layers[lower])
    if host is None:
        raise ValueError("the topology has no host layer")
    return host, layers, tasks
