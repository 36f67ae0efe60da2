"""What the soak checks before it starts anything: that the daemon it is told to drive answers
(`--rpc`), and that every layer fault of the schedule has a layer to go into, of the kind it
needs, in the daemon's topology. Either failing is a usage error (exit 2) said at once, not a
report after the whole hold."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from ..aio import AsyncClient
from ..errors import ChimneyError, ConnectionLost
from .faults import FaultSpec
from .limits import PREFLIGHT_TIMEOUT_S

#: A topology in which a MUX fault can go in: what --help names too.
TEAMING_CONFIG = "deploy/teaming.toml"
#: The fault kinds a teaming MUX carries out: without a mux the daemon refuses them (`nic_up`
#: too: the soak takes its NIC out with a `nic_down` first, docs/faults.md `nic_up`).
MUX_KINDS = ("nic_down", "nic_up", "rebalance")


class NotReady(Exception):
    """The soak cannot start; the message says why and what to do."""


async def daemon_info(address: str, token: str | None) -> dict[str, Any]:
    """`stack.info` of the daemon at `address`, asked on a client of its own (closed after).
    Raises NotReady when nothing answers there, or it refuses us."""
    try:
        client = await AsyncClient.connect(
            address, token=token, timeout=PREFLIGHT_TIMEOUT_S, call_timeout=PREFLIGHT_TIMEOUT_S
        )
    except ConnectionLost as exc:
        # the library's message starts "cannot connect to ADDR: "; the reason is what follows
        reason = str(exc).removeprefix(f"cannot connect to {address}: ")
        raise NotReady(
            f"cannot connect to {address}: {reason}; is chimneyd running? (`make run`)"
        ) from None
    except ChimneyError as exc:  # a wrong --token
        raise NotReady(f"the daemon at {address} refused us: {exc}") from None
    try:
        info: dict[str, Any] = await client.stack_info()
    except ChimneyError as exc:
        hint = "" if token else " (does it need --token?)"
        raise NotReady(f"the daemon at {address} did not answer stack.info: {exc}{hint}") from None
    finally:
        await client.close()
    return info


def spawn_layers(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The layers the daemon the soak spawns will have: its --daemon-config read as chimneyd
    reads it (None where chimneyd is not importable: the daemon then says for itself). Raises
    NotReady for a configuration chimneyd would refuse at start."""
    try:
        from chimneyd.config import ConfigError, check_paths, load_config
    except ImportError:  # pragma: no cover - the soak spawns `python -m chimneyd`
        return None
    # as the soak starts it: on a loopback port of its own (a file's address is not used)
    overrides: dict[str, Any] = {"rpc.listen": ["127.0.0.1:0"]}
    shards = getattr(args, "shards", None)
    if shards is not None:
        overrides["daemon.shards"] = int(shards) if shards.isdigit() else shards
    try:
        config = load_config(args.daemon_config, overrides)
        check_paths(config)  # a log.file it could not open
    except ConfigError as exc:
        where = f"--daemon-config {args.daemon_config}" if args.daemon_config else "chimneyd"
        raise NotReady(f"{where}: {exc}") from None
    return list(config.as_dict()["layer"])


def info_layers(info: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The layers a daemon's stack.info lists (None: it lists none we can read)."""
    layers = info.get("layers")
    if not isinstance(layers, list) or not layers:
        return None
    return [la for la in layers if isinstance(la, dict)]


def check_topology(
    specs: Iterable[FaultSpec], layers: Sequence[dict[str, Any]], spawned: bool
) -> None:
    """Every layer fault names a layer the topology has, of the kind its fault.inject needs:
    a target (`target_failure`), a mux (`rebalance`), a layer right under a mux (`nic_down`,
    `nic_up`).
    Raises NotReady naming the fault, else the daemon would refuse it only when the hold
    injects it. `spawned`: the soak starts the daemon (the advice names --daemon-config)."""
    kinds = {str(la.get("name")): str(la.get("kind")) for la in layers}
    above = {
        str(lower): str(la.get("name"))
        for la in layers
        if la.get("kind") == "mux"
        for lower in la.get("lower") or ()
    }
    have = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
    teaming = (
        f"--daemon-config {TEAMING_CONFIG}" if spawned else f"chimneyd --config {TEAMING_CONFIG}"
    )
    for spec in dict.fromkeys(specs):
        if spec.scope != "layer":
            continue
        layer = spec.param("layer")
        name = f"--faults {spec.kind} (layer {layer})"
        if spec.kind in MUX_KINDS and "mux" not in kinds.values():
            raise NotReady(
                f"{name} needs a topology with a mux, and this daemon has none (layers: {have});"
                f" use a teaming topology, e.g. {teaming}"
            )
        if layer not in kinds:
            raise NotReady(f"{name}: the daemon has no layer {layer} (layers: {have})")
        if spec.kind in ("nic_down", "nic_up") and layer not in above:
            raise NotReady(f"{name}: {layer} is not right under a mux (layers: {have})")
        if spec.kind == "rebalance" and kinds[layer] != "mux":
            raise NotReady(f"{name}: {layer} is a {kinds[layer]}, not a mux (layers: {have})")
        if spec.kind == "target_failure" and kinds[layer] != "target":
            raise NotReady(f"{name}: {layer} is a {kinds[layer]}, not a target (layers: {have})")
