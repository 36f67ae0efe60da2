"""Layer faults, injected by the coordinator: fail_next and its presets, raise_next, NIC outages
(`target_failure`, a teaming MUX's `nic_down`) with the times that bound what they explain
(from just before fault.inject to just after fault.clear), the offload gauge of the NIC before
and at the end of the outage, and the connections each NIC carried then."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ..aio import AsyncClient
from ..errors import ChimneyError
from .channels import Channel
from .faults import FAULT_KINDS, INITIATE_CALL, MOVES, OUTAGES, TERMINATE_CALL, ScheduledFault
from .limits import (
    MOVED_BACK_SHARE,
    RESUME_GRACE_S,
    SETTLE_BACK_SHARE,
    SETTLE_MAX_S,
    SETTLE_POLL_S,
    SETTLE_QUIET_S,
    STAGGER_S,
)
from .parsing import parse_duration
from .probe_faults import PROBED, ProbeFaults

#: The daemon's faults that keep a NIC out of service while any of them is listed (its MUX
#: takes it out, or it failed); a NIC is back only once none of them is left.
KEEP_A_NIC_OUT = ("nic_down", "target_failure")


class LayerFaults(ProbeFaults):
    control: AsyncClient | None
    ins: list[Channel]
    layer_records: list[dict[str, Any]]
    interrupted: asyncio.Event
    bugs_planted: int  # calls raise_next faults were injected to make raise (spec §6.3)
    nics_settling: int  # outages under way, until their RESUME's re-offloads end (take_due)
    shard_pids: dict[int, int]  # a daemon of several shards: each shard's process

    def say(self, text: str) -> None: ...

    async def wait_or_interrupt(self, seconds: float) -> None: ...

    async def inject_late(self, pending: deque[ScheduledFault]) -> None:
        """Inject what is still pending at the end of the hold (it waited for a NIC outage to
        settle), STAGGER_S apart."""
        while pending:
            await self.inject(pending.popleft())
            if pending:
                await asyncio.sleep(STAGGER_S)

    async def inject(self, sf: ScheduledFault) -> None:
        spec = sf.spec
        if spec.scope == "conn":
            # the owner of a connection injects faults on it: pick a worker round-robin
            self.ins[sf.tag % len(self.ins)].put(
                {"type": "fault", "tag": sf.tag, "kind": spec.kind, "params": dict(spec.params)}
            )
            return
        assert self.control is not None
        params = {key: spec.param(key) for key in FAULT_KINDS[spec.kind].keys}
        rec: dict[str, Any] = {
            "tag": sf.tag,
            "kind": spec.kind,
            "effect": spec.effect,
            "params": params,
            "injected": False,
            "t": sf.t,
        }
        self.layer_records.append(rec)
        # a daemon of shards: the layer in one shard only (/shard=K), else in every shard
        where = {"shard": int(params["shard"])} if params.get("shard") else {}
        if spec.kind in PROBED:
            # injected and checked with connections of the coordinator's own (probe_faults)
            await self.inject_probed(rec, where)
            return
        layer = params["layer"]
        try:
            if spec.kind in OUTAGES:
                self.nics_settling += 1
                try:
                    if spec.kind in MOVES:
                        await self.rebalance(rec, layer, where)
                    else:
                        for_s = parse_duration(params["for"])
                        await self.outage(rec, spec.kind, layer, for_s, where)
                        if rec.get("cleared"):
                            await self.settle(rec, layer, where.get("shard"))
                    # what is asked up until RESUME_GRACE_S after its NICs were back is this
                    # outage's (outcomes.Window): a spread one after it waits past that, or
                    # this one would be judged with the other's uploads, that one with none
                    if not self.interrupted.is_set():
                        await asyncio.sleep(RESUME_GRACE_S + STAGGER_S)
                finally:
                    self.nics_settling -= 1
                return
            daemon_kind = FAULT_KINDS[spec.kind].daemon_kind
            assert daemon_kind in ("fail_next", "raise_next")
            # fail_next's status, raise_next's skip: the keys it takes, as the daemon names them
            keys: dict[str, Any] = {
                "layer": layer,
                "call": params["call"],
                "count": int(params["count"]),
            }
            # in every shard unless one is named: its count in each
            rec["shards"] = 1 if where else max(1, len(self.shard_pids))
            if daemon_kind == "fail_next":
                keys["status"] = params["status"]
            else:
                keys["skip"] = int(params["skip"])
                # the layer errors and invariant violations the bugs will count are expected
                self.bugs_planted += keys["count"] * rec["shards"]
            rec["t0"] = time.monotonic()
            rec["fault_id"] = await self.control.fault_inject(daemon_kind, **keys, **where)
            rec["t1"] = time.monotonic()
            rec["injected"] = True
            provoke = _calls_to_provoke(daemon_kind, spec.effect, params, rec.get("shards", 1))
            if provoke:
                # a hold without churn or uploads offloads nothing and uploads nothing: have
                # connections of our own upload and offload again, so that the next terminates
                # and initiates happen now
                self.ins[sf.tag % len(self.ins)].put({"type": "provoke_offload", "count": provoke})
        except (ChimneyError, OSError, ValueError, KeyError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"

    async def settle(self, rec: dict[str, Any], layer: str, shard: int | None) -> None:
        """Wait while the re-offloads after the outage fill the NICs again: until the
        connections offloaded are back to SETTLE_BACK_SHARE of those before it and have not
        risen for SETTLE_QUIET_S (at most SETTLE_MAX_S; 10,000 connections take seconds)."""
        before = sum((rec.get("nics_before") or {}).values()) or rec.get("offloaded_before") or 0
        start = last_rise = time.monotonic()
        high = -1
        while time.monotonic() - start <= SETTLE_MAX_S and not self.interrupted.is_set():
            value = await self.offloaded(layer, shard)
            now = time.monotonic()
            if value is not None and value > high:
                high, last_rise = value, now
            back = high >= before * SETTLE_BACK_SHARE
            if back and "t_back" not in rec:
                # the host has heard RESUME by now (Window: refusals until then are the outage's)
                rec["t_back"] = now
            if back and now - last_rise >= SETTLE_QUIET_S:
                break
            await asyncio.sleep(SETTLE_POLL_S)
        rec["settled_s"] = round(time.monotonic() - start, 3)

    async def offloaded(self, layer: str, shard: int | None = None) -> int | None:
        """The TCP connections offloaded on every NIC (stack.info): a teaming MUX puts those
        of the NIC it took out on the others, whose re-offloads the failed NIC's gauge does not
        see; where stack.info does not count them, `layer`'s offload gauge."""
        counts = await self.nic_connections(shard)
        if counts:
            return sum(counts.values())
        return await self.layer_gauge(layer, shard)

    async def layer_gauge(self, layer: str, shard: int | None = None) -> int | None:
        """The layer's offloads_active: the daemon's, or shard `shard`'s."""
        stats = await self._of_shard("stack_stats", shard)
        if stats is None:
            return None
        value = ((stats.get("layers") or {}).get(layer) or {}).get("offloads_active")
        return int(value) if isinstance(value, int) else None

    async def tcp_left(self, layer: str, shard: int | None = None) -> int | None:
        """TCP connections still offloaded on `layer`: its `tcp` in stack.info when it is a NIC
        (a neighbor or path it holds for an initiate it queued while paused is not one, spec
        §5.5), else its offload gauge — the daemon's, or shard `shard`'s."""
        counts = await self.nic_connections(shard)
        if counts is not None and layer in counts:
            return counts[layer]
        return await self.layer_gauge(layer, shard)

    async def nic_connections(self, shard: int | None = None) -> dict[str, int] | None:
        """The TCP connections each NIC (layer of kind target) carries now (stack.info): in
        the daemon, or in shard `shard`."""
        info = await self._of_shard("stack_info", shard)
        if info is None:
            return None
        return {
            la["name"]: int(la.get("tcp", 0))
            for la in info.get("layers", [])
            if la.get("kind") == "target"
        }

    async def outage(
        self,
        rec: dict[str, Any],
        kind: str,
        layer: str,
        outage: float,
        where: dict[str, int] | None = None,
    ) -> None:
        """Take the NIC out for `outage` s and clear it; the times bound what it explains.
        `where`: `{"shard": K}` for the NIC of one shard of a daemon of shards."""
        assert self.control is not None
        where = where or {}
        shard = where.get("shard")
        rec["offloaded_before"] = await self.tcp_left(layer, shard)  # connections, not objects
        rec["nics_before"] = await self.nic_connections(shard)
        rec["t0"] = time.monotonic()
        for inbox in self.ins:  # the workers keep the stretches on a NIC spanning it (state.py)
            inbox.put({"type": "nic_outage", "t0": rec["t0"], "nic": layer, "shard": shard})
        rec["fault_id"] = fid = await self.control.fault_inject(kind, layer=layer, **where)
        rec["t1"] = time.monotonic()
        rec["injected"] = True
        in_shard = f" in shard {shard}" if shard is not None else ""
        self.say(f"chimney-soak: {layer}{in_shard} {OUTAGES[kind]} (fault {fid}) for {outage:g} s")
        await self.wait_or_interrupt(outage)
        # what is offloaded on it at the end of the outage: nothing may be (UPLOAD_ALL, PAUSE)
        rec["offloaded_at_end"] = await self.tcp_left(layer, shard)
        rec["nics_at_end"] = await self.nic_connections(shard)
        rec["t_clear0"] = time.monotonic()
        try:
            await self.control.fault_clear(fid)
        except ChimneyError as exc:
            rec["clear_error"] = str(exc)
            return
        rec["t_clear1"] = time.monotonic()
        rec["cleared"] = True
        self.say(f"chimney-soak: {layer}{in_shard} {await self._after_clear(fid, layer, shard)}")

    async def _after_clear(self, fid: int, layer: str, shard: int | None) -> str:
        """What clearing the outage `fid` of `layer` did: the daemon keeps a NIC out until
        the last nic_down or target_failure of it is cleared (docs/faults.md `nic_down`,
        `target_failure`), so it is back only if fault.list has none left."""
        assert self.control is not None
        try:
            listed = await self.control.fault_list()
        except ChimneyError:
            return f"fault {fid} cleared (fault.list failed: whether it is back is unknown)"
        keeping = [
            f"fault {f.get('id')} ({f.get('kind')})"
            for f in listed
            if f.get("kind") in KEEP_A_NIC_OUT
            and f.get("layer") == layer
            and (shard is None or not f.get("shards") or shard in f["shards"])
        ]
        if keeping:
            return f"still out: fault {fid} cleared, {', '.join(keeping)} still listed"
        return f"back (fault {fid} cleared)"

    async def rebalance(self, rec: dict[str, Any], layer: str, where: dict[str, int]) -> None:
        """Have the MUX `layer` even out its NICs, and wait (at most SETTLE_MAX_S) until the
        connections it asked up are offloaded again: its `evacuating` back to 0, then its NICs
        in service carrying MOVED_BACK_SHARE of what they did before. Judged as an outage over
        as soon as it went in (`t_clear0` = `t_clear1` = `t1`); the MUX's own count per NIC in
        service, before and after, says whether it evened them."""
        assert self.control is not None
        shard = where.get("shard")
        rec["nics_before"] = await self.nic_connections(shard)
        rec["mux_before"], _, rec["mux_shards_before"] = await self.mux_view(layer, shard)
        rec["t0"] = time.monotonic()
        rec["fault_id"] = fid = await self.control.fault_inject("rebalance", layer=layer, **where)
        rec["t1"] = rec["t_clear0"] = rec["t_clear1"] = time.monotonic()
        rec["injected"] = rec["cleared"] = True
        in_shard = f" in shard {shard}" if shard is not None else ""
        self.say(f"chimney-soak: {layer}{in_shard} rebalanced (fault {fid})")
        start = time.monotonic()
        before = sum((rec["mux_before"] or {}).values())
        begun = False  # fault.inject returns once the MUX has the order, not once it acted
        while time.monotonic() - start <= SETTLE_MAX_S and not self.interrupted.is_set():
            lowers, evacuating, _ = await self.mux_view(layer, shard)
            begun = begun or evacuating > 0 or time.monotonic() - start >= SETTLE_QUIET_S
            if lowers is None or (
                begun and not evacuating and sum(lowers.values()) >= before * MOVED_BACK_SHARE
            ):
                rec["t_back"] = time.monotonic()
                break
            await asyncio.sleep(SETTLE_POLL_S)
        rec["settled_s"] = round(time.monotonic() - start, 3)
        rec["nics_at_end"] = await self.nic_connections(shard)
        rec["mux_after"], _, rec["mux_shards_after"] = await self.mux_view(layer, shard)

    async def _of_shard(self, method: str, shard: int | None) -> dict[str, Any] | None:
        """The daemon's answer to `method` (`stack_info`, `stack_stats`), or its shard
        `shard`'s part of it; None if it did not answer."""
        assert self.control is not None
        try:
            answer: dict[str, Any] = await getattr(self.control, method)()
        except ChimneyError:
            return None
        if shard is not None:
            shards = answer.get("shards") or []
            answer = next((s for s in shards if s.get("shard") == shard), {})
        return answer

    async def mux_view(
        self, layer: str, shard: int | None
    ) -> tuple[dict[str, int] | None, int, list[dict[str, int]] | None]:
        """The MUX `layer`'s connections per NIC in service, how many it has asked up and not
        yet seen uploaded (stack.info), and on a daemon of shards (none named) the same per
        NIC of each shard's MUX; (None, 0, None) where it does not say."""
        info = await self._of_shard("stack_info", shard)
        if info is None:
            return None, 0, None
        lowers, evacuating = _mux_lowers(info, layer)
        per_shard = None
        if shard is None and info.get("shards"):
            per_shard = [_mux_lowers(part, layer)[0] or {} for part in info["shards"]]
        return lowers, evacuating, per_shard


def _mux_lowers(info: dict[str, Any], layer: str) -> tuple[dict[str, int] | None, int]:
    mux = next((la for la in info.get("layers", []) if la.get("name") == layer), None)
    if mux is None or not isinstance(mux.get("lowers"), dict):
        return None, 0
    lowers = {
        name: int(lo.get("connections", 0))
        for name, lo in mux["lowers"].items()
        if lo.get("in_service")
    }
    return lowers, int(mux.get("evacuating") or 0)


def _calls_to_provoke(
    daemon_kind: str, effect: str | None, params: dict[str, str], shards: int
) -> int:
    """How many of our connections to upload and offload again after a fault is injected: as
    many as the initiates a refuse_offload fails, or as the initiates or terminates (`skip`
    included) a raise_next in those calls waits for, in each shard it went into; else none."""
    if effect == "offload_refusal":
        return int(params["count"]) * shards
    if daemon_kind == "raise_next" and params["call"] in (INITIATE_CALL, TERMINATE_CALL):
        return (int(params["count"]) + int(params["skip"])) * shards
    return 0
