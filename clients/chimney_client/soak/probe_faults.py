"""Faults the coordinator injects and checks with connections of its own (probes): `delay`,
`invalidate`, `host_event` and `nic_up`. Each is judged twice: on what the daemon says it did
(stack.stats call counts, stack.info, fault.list) and on a probe connection the coordinator
opens to an echo peer, whose bytes it verifies itself; the workers' connections the fault
moved (uploads it explains) are judged in `judge_probed` — offloaded again, with data verified
after. The outcomes each kind must show are those of docs/faults.md."""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..aio import AsyncClient
from ..errors import ChimneyError, InternalError, InvalidState, NdisStatusError
from .channels import Channel
from .limits import CALL_TIMEOUT_S, RESUME_GRACE_S, SETTLE_MAX_S, SETTLE_POLL_S, STAGGER_S
from .parsing import parse_duration

Record = dict[str, Any]

#: The soak kinds injected and judged here.
PROBED = ("delay", "invalidate", "host_event", "nic_up")
#: The calls a `delay` may hold that a probe can make and time (each held call cannot complete
#: before the delay is over), with the NDIS call of the layer above that reaches each (what
#: stack.stats counts, per calling layer).
DELAY_CALLS = {
    "MiniportTcpOffloadSend": "NdisOffloadTcpSend",
    "MiniportInitiateOffload": "NdisInitiateOffload",
}
#: The call a layer makes as it completes each call of DELAY_CALLS it was made (stack.stats
#: counts it by status): what a NIC under a MUX counts of the calls it, not its MUX, got.
NIC_DONE = {
    "NdisOffloadTcpSend": "NdisTcpOffloadSendComplete",
    "NdisInitiateOffload": "NdisMInitiateOffloadComplete",
}
#: What a probe round trip sends.
PROBE_BYTES = 4096
#: How long a probe round trip may take at most (a delay holds a call 60 s at most).
PROBE_TIMEOUT_S = 75.0
#: Probe connections a `nic_up` opens to see one placed on the NIC back in service (a MUX
#: round-robin over three NICs places one of three there; least-loaded, the first).
NIC_UP_PROBES = 3
#: How long the soak offers a probe connection of its own to the NIC a fault is checked on
#: while that NIC refuses it (full, paused, out of service): a NIC that never takes it leaves
#: what the probe was to show not judged (no fault of the daemon's; the report says so).
PROBE_OFFLOAD_S = 5.0
#: What a NIC answers an offload it has no room for (spec §3.2.4, §8) or while it is paused
#: (spec §5.5): a probe refused so is no fault of the daemon's; refused otherwise, it is.
NO_ROOM = frozenset(
    {
        "NDIS_STATUS_OFFLOAD_TCP_ENTRIES",
        "NDIS_STATUS_OFFLOAD_PATH_ENTRIES",
        "NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES",
        "NDIS_STATUS_OFFLOAD_PAUSE",
    }
)
#: What a NIC answers an offload it has no room for (NO_ROOM but a pause): a worker's
#: refused so while a probe took a place on its full NIC may be the probe's doing.
NO_ENTRIES = NO_ROOM - {"NDIS_STATUS_OFFLOAD_PAUSE"}
#: The no-room answer stack.info can check: its `tcp` against `max_connections` (spec §8).
TCP_ENTRIES = "NDIS_STATUS_OFFLOAD_TCP_ENTRIES"
#: The call whose failure refuses an offload (and its path and neighbor blocks' variants,
#: `MiniportInitiateOffload[path]`): a soak fault on it may refuse the soak's own probe.
INITIATE_CALL = "MiniportInitiateOffload"
#: The connections a problem names at most (the report keeps them short).
EXAMPLES_SHOWN = 5
#: A held call completes `ms` after it was made; the probe's clock reads from just before the
#: request went out, so it may read this much less than `ms` (none in practice).
HELD_SLACK_S = 0.005
#: RPC connections opened at most to get one in the shard a fault went into (`/shard=K`): the
#: kernel hands each new one to a shard (docs/rpc.md, Shards), none of them per se ours.
SHARD_CONNECT_TRIES = 32
#: The client in a fault's shard its probes live on (None: `control`'s). Per task: the faults
#: of a schedule are checked in tasks of their own, at times that overlap.
_PROBE_CLIENT: contextvars.ContextVar[AsyncClient | None] = contextvars.ContextVar(
    "probe_client", default=None
)


@dataclass(frozen=True)
class Refusal:
    """Why the soak's own connection was not offloaded where a probe needed it, and whether
    that is no fault of the daemon's (`excused`: no room, a pause, a host event, a NIC out of
    service, a fault the soak itself put in), which leaves what the probe was to show not
    judged; else the daemon refused a connection it could take."""

    why: str
    excused: bool


def _above(info: Record | None, upper: str, layer: str) -> bool | None:
    """Whether stack.info (`info`) has `layer` below `upper` (its `lower` names, or its MUX
    `lowers`, followed down); None where it says nothing of how its layers stack."""
    below: dict[str, set[str]] = {}
    for la in (info or {}).get("layers", []):
        lower = la.get("lower")
        lowers = la.get("lowers")
        names = set(lower) if isinstance(lower, list) else set()
        names |= set(lowers) if isinstance(lowers, dict) else set()
        if lower is not None or lowers is not None:
            below[str(la.get("name"))] = {str(n) for n in names}
    if not below:
        return None
    seen: set[str] = set()
    todo = [upper]
    while todo:
        name = todo.pop()
        if name == layer:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(below.get(name, ()))
    return False


class RoomRead(NamedTuple):
    """One read of stack.info's room of some NICs: `said` for a refusal's why (empty where it
    says nothing of their room), `full` (one has no place, or is out of service in its MUX),
    and `tcp`, each one's count of connections."""

    said: str
    full: bool
    tcp: tuple[tuple[str, Any], ...]


def _room_moved(seen: Sequence[RoomRead]) -> bool:
    """Whether the reads of one refusal episode leave a no-room answer possible: the NIC full
    at one of them, or its count not the same at all (a place taken when the daemon decided
    may be free again at the read after: a worker's connection closed between, spec §8). Only
    a NIC with the same places free at every read shows a refusal it had room for."""
    return any(r.full for r in seen) or len({r.tcp for r in seen}) > 1


def _withholds(exc: ChimneyError | None, reason: str) -> bool:
    """Whether a refusal (answered `exc`, or said `reason` by tcp.info's `offload_refused`) is
    the host withholding the NIC for a host event (INVALID_STATE naming it, spec §6.2)."""
    from .traffic import withheld_by  # (traffic's imports come back here)

    if not isinstance(exc, InvalidState) and reason.startswith(f"{InvalidState.symbol}:"):
        exc = InvalidState(InvalidState.code, reason)
    return isinstance(exc, InvalidState) and withheld_by(exc) is not None


class ProbeFaults:
    control: AsyncClient | None
    rpc_addr: str
    args: Any
    peer_addrs: list[tuple[str, int]]
    interrupted: asyncio.Event
    nics_settling: int
    ins: list[Channel]

    def say(self, text: str) -> None: ...

    async def wait_or_interrupt(self, seconds: float) -> None: ...

    async def settle(self, rec: dict[str, Any], layer: str, shard: int | None) -> None: ...

    async def tcp_left(self, layer: str, shard: int | None = None) -> int | None: ...

    async def nic_connections(self, shard: int | None = None) -> dict[str, int] | None: ...

    async def _of_shard(self, method: str, shard: int | None) -> dict[str, Any] | None: ...

    async def inject_probed(self, rec: Record, where: dict[str, int]) -> None:
        """Inject the fault of `rec` (kind in PROBED) and record what it did; errors go into
        `rec["error"]` (not injected) or `rec["probe_error"]` (injected, the probe failed)."""
        assert self.control is not None
        kind = rec["kind"]
        self.nics_settling += kind in ("host_event", "nic_up")
        probes: list[int] = []
        try:
            if where.get("shard") is not None:
                # a client's connections live in its own shard (docs/rpc.md, Shards): a probe
                # must be in the shard the fault acts in, or it sees nothing of it
                _PROBE_CLIENT.set(await self._client_in_shard(where["shard"]))
            if kind == "delay":
                await self._delay(rec, where, probes)
            elif kind == "invalidate":
                await self._invalidate(rec, probes)
            elif kind == "host_event":
                await self._host_event(rec, where, probes)
            else:
                await self._nic_up(rec, where, probes)
            if kind != "delay" and not self.interrupted.is_set():
                # what is asked up until RESUME_GRACE_S after is this fault's (outcomes.Window)
                await asyncio.sleep(RESUME_GRACE_S + STAGGER_S)
        except (ChimneyError, OSError, ValueError, KeyError) as exc:
            key = "probe_error" if rec.get("injected") else "error"
            rec[key] = f"{type(exc).__name__}: {exc}"
        finally:
            # a refuse_offload of the soak's that failed one of these is judged knowing it
            # (outcomes `_judge_fail_next`): no worker owes an outcome for it
            rec["probe_conns"] = list(probes)
            self.nics_settling -= kind in ("host_event", "nic_up")
            # a fault put in and not yet taken out (its probe failed, the nic_up was refused):
            # taken out now, or the daemon keeps it (a NIC out of service, a target withheld,
            # calls held) for the rest of the run
            for fid in _left_armed(rec):
                try:
                    await self.control.fault_clear(fid)
                except ChimneyError as exc:
                    rec.setdefault("clear_error", f"{type(exc).__name__}: {exc}")
            own = _PROBE_CLIENT.get()
            try:
                for cid in probes:
                    try:
                        await self._pc().tcp_close(cid)
                    except ChimneyError:
                        pass
            finally:
                # the fault's shard's own client (one RPC connection per fault) is closed
                # whatever closing its probes did (a broken connection: OSError)
                if own is not None:
                    _PROBE_CLIENT.set(None)
                    await own.close()
                # the probes' places on their NIC are free again from here
                rec["probes_closed_t"] = time.monotonic()

    def _pc(self) -> AsyncClient:
        """The client the probes of the fault being checked are made on: its own in the
        fault's shard (`_PROBE_CLIENT`), else `control`."""
        client = _PROBE_CLIENT.get() or self.control
        assert client is not None
        return client

    async def _client_in_shard(self, shard: int) -> AsyncClient:
        """A client of its own whose RPC connection landed on `shard` (stack.info `shard`);
        ValueError (the fault is not injected) if none did in SHARD_CONNECT_TRIES."""
        for _ in range(SHARD_CONNECT_TRIES):
            client = await AsyncClient.connect(
                self.rpc_addr, token=self.args.token, call_timeout=CALL_TIMEOUT_S
            )
            try:
                if (await client.stack_info()).get("shard") == shard:
                    return client
            except BaseException:
                await client.close()
                raise
            await client.close()
        raise ValueError(f"no RPC connection landed on shard {shard} in {SHARD_CONNECT_TRIES}")

    # -- probes --------------------------------------------------------------------------------
    async def _probe(self, probes: list[int], target: str | None = None) -> int:
        """A connection of ours to an echo peer, offloaded at connect where the host can."""
        assert self.control is not None
        host, port = self.peer_addrs[len(probes) % len(self.peer_addrs)]
        cid = await self._pc().tcp_connect(host, port, target=target)
        probes.append(cid)
        return cid

    async def _round_trip(self, cid: int) -> tuple[bool, float]:
        """Send PROBE_BYTES and read them back: whether they came back intact, and how long
        tcp.send took to answer (the send's completion, spec §4.1)."""
        assert self.control is not None
        data = os.urandom(PROBE_BYTES)
        t = time.monotonic()
        await self._pc().tcp_send(cid, data)
        took = time.monotonic() - t
        got = bytearray()
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while len(got) < len(data) and time.monotonic() < deadline:
            got += await self._pc().tcp_recv(cid, len(data) - len(got), 1000)
        return bytes(got) == data, took

    async def _state(self, cid: int) -> str:
        assert self.control is not None
        return str((await self._pc().tcp_info(cid)).get("state", "?"))

    async def _calls(self, name: str, below: str | None = None, shard: int | None = None) -> int:
        """How many `name` calls stack.stats counts: made by the layers bound right above
        `below`, or by every layer. A MUX's count is its NICs' together: for a NIC under one,
        the calls that NIC completed (`NIC_DONE`), its own and no other NIC's. `shard`: in
        that shard of a daemon of shards only (a fault put into one shard acts there)."""
        assert self.control is not None
        stats = await self._of_shard("stack_stats", shard)
        info = await self._of_shard("stack_info", shard)
        if stats is None or info is None:
            raise ValueError("stack.stats or stack.info did not answer: no call count")
        callers = None
        if below is not None:
            above = [
                la
                for la in info.get("layers", [])
                if below in (la.get("lower") or la.get("lowers") or [])
            ]
            if any(la.get("kind") == "mux" for la in above) and name in NIC_DONE:
                # what the MUX counts went to any of its NICs: a delay on the wrong NIC would
                # see the calls of the right one; count what the delayed NIC did itself
                done = NIC_DONE[name]
                calls = ((stats.get("layers") or {}).get(below) or {}).get("calls") or {}
                return sum(int(n) for k, n in calls.items() if k.split("/")[0] == done)
            callers = {str(la.get("name")) for la in above}
        total = 0
        for lname, la in (stats.get("layers") or {}).items():
            if callers is None or lname in callers:
                total += int((la.get("calls") or {}).get(name, 0))
        return total

    # -- the kinds -----------------------------------------------------------------------------
    async def _delay(self, rec: Record, where: dict[str, int], probes: list[int]) -> None:
        """Arm the delay for `/for`, time one probe call it must hold (a held call completes
        `ms` after it was made at the earliest), and count the calls the layer got meanwhile."""
        assert self.control is not None
        p = rec["params"]
        layer, call, ms = p["layer"], p["call"], int(p["ms"])
        for_s = parse_duration(p["for"])
        # on a NIC, the probe pinned to it (a MUX would place it on any of its NICs)
        kinds = {
            la.get("name"): la.get("kind") for la in (await self.control.stack_info())["layers"]
        }
        cid = await self._probe(probes, target=layer if kinds.get(layer) == "target" else None)
        rec["probe_before_ok"], _ = await self._round_trip(cid)
        # a call of the probe's is held only if it goes through `layer`: the probe offloaded
        # there. A NIC with no room for it leaves the probe's timing not judged (spec §8); a
        # refusal its room does not explain is the daemon's to explain: not injected
        shard = await self._probe_shard()
        on = await self._probe_offloaded(rec, "probe_not_offloaded", cid, f"through {layer}", shard)
        if on and call == INITIATE_CALL:
            await self._pc().tcp_upload(cid)
        before = await self._calls(DELAY_CALLS[call], layer, where.get("shard"))
        rec["t0"] = time.monotonic()
        rec["fault_id"] = fid = await self.control.fault_inject(
            "delay", layer=layer, call=call, ms=ms, **where
        )
        rec["t1"] = time.monotonic()
        rec["injected"] = True
        self.say(f"chimney-soak: {call} in {layer} delayed {ms} ms (fault {fid}) for {for_s:g} s")
        t = time.monotonic()
        if "probe_not_offloaded" in rec:
            rec["probe_ok"], _ = await self._round_trip(cid)  # in the host stack: not held
        elif call == "MiniportInitiateOffload":
            try:
                await self._pc().tcp_offload(cid)
                rec["probe_held_s"] = round(time.monotonic() - t, 4)
            except (NdisStatusError, InvalidState, InternalError) as exc:
                # its slot taken meanwhile (a worker's reopen: refused before any layer was
                # called), or failed by a fault of the soak's own: nothing of it to time
                refused = await self._judge_refusal(
                    cid, exc, await self._pc().tcp_info(cid), layer, shard
                )
                if not refused.excused:
                    raise
                rec["probe_not_offloaded"] = (
                    f"the soak's probe connection could not be offloaded again: {refused.why}"
                )
            rec["probe_ok"], _ = await self._round_trip(cid)
        else:
            rec["probe_ok"], took = await self._round_trip(cid)
            rec["probe_held_s"] = round(took, 4)
        listed = {f.get("id"): f for f in await self.control.fault_list()}
        rec["listed_while_armed"] = fid in listed
        # the daemon's own count of what it held, where it gives one
        rec["delayed_listed"] = (listed.get(fid) or {}).get("delayed")
        await self.wait_or_interrupt(max(0.0, for_s - (time.monotonic() - rec["t1"])))
        calls = await self._calls(DELAY_CALLS[call], layer, where.get("shard"))
        rec["calls_while_armed"] = calls - before
        rec["t_clear0"] = time.monotonic()
        await self.control.fault_clear(fid)
        rec["t_clear1"] = time.monotonic()
        rec["cleared"] = True
        rec["probe_after_ok"], _ = await self._round_trip(cid)

    async def _invalidate(self, rec: Record, probes: list[int]) -> None:
        """Invalidate an object of a probe (spec §3.5): the probe, and with a path or
        neighbor every connection sharing it, must be asked up (InvalidState), uploaded, and
        carry verified data after, offloaded again. A probe its NIC will not take (full, out
        of service) is no fault of the daemon's: what it could not show is not judged."""
        assert self.control is not None
        obj, layer = rec["params"]["object"], rec["params"]["layer"]
        cid = await self._probe(probes, target=layer)
        rec["probe_before_ok"], _ = await self._round_trip(cid)
        # a daemon of shards: the probe's (its client's), where the invalidate acts alone
        # (each shard has its own objects), and what it did is read (stack.* `shards`)
        rec["shard"] = shard = await self._probe_shard()
        # not offloaded: nothing of the soak's own to invalidate, not injected (said not judged)
        on = await self._probe_offloaded(rec, "not_judged", cid, f"on {layer}", shard)
        rec["probe_state_before"] = await self._state(cid)
        if not on:
            return
        mate = None
        if obj in ("path", "neighbor"):
            # a second connection of ours to the probe's echo peer, on its NIC, in its shard:
            # it shares the probe's path and neighbor (spec §3.5: asked up with it), and,
            # ours, it is still there at the invalidate (a worker's may close in between)
            host, port = self.peer_addrs[0]
            mate = await self._pc().tcp_connect(host, port, target=layer)
            probes.append(mate)
            mate_refused = await self._offload_on(rec, mate, layer, shard)
            rec["mate_state_before"] = await self._state(mate)
            if mate_refused is not None:
                # no room for it: judged on the workers' connections asked up with it, if any
                # (judge_probed); refused otherwise: a fault of the daemon's (`mate_refused`)
                key = "mate_not_offloaded" if mate_refused.excused else "mate_refused"
                rec[key] = mate_refused.why
                mate = None
        rec["nics_before"] = await self.nic_connections(shard)
        # the workers' connections the probe shares its path and neighbor with: those on its
        # NIC in its shard, when every echo peer is on the probe's host (else some need not
        # share them); a count before, for the report only
        on_nic = (rec["nics_before"] or {}).get(layer)
        if len({h for h, _ in self.peer_addrs}) == 1 and on_nic is not None:
            ours = 1 + (mate is not None)
            rec["sharing_before"] = max(0, int(on_nic) - ours)  # but the probe and its mate
        # the calls of the probe's shard: the daemon-wide sum has another shard's too
        invalidates = await self._calls("NdisInvalidateOffload", shard=shard)
        rec["t0"] = time.monotonic()
        if "mate_not_offloaded" in rec:
            # no second connection of ours: the workers' on the NIC at the invalidate are
            # what must show it shared; they keep their stretches on it as for a NIC outage
            # (state.py `placements`), judged in judge_probed (`_unasked_on_the_nic`)
            for inbox in self.ins:
                inbox.put({"type": "nic_outage", "t0": rec["t0"], "nic": layer, "shard": shard})
        rec["fault_id"] = await self.control.fault_inject("invalidate", conn=cid, object=obj)
        rec["t1"] = time.monotonic()
        rec["injected"] = True
        self.say(f"chimney-soak: {obj} of connection {cid} invalidated")
        deadline = time.monotonic() + SETTLE_MAX_S
        state = await self._state(cid)
        # (uploading: asked up, its terminate under way with every connection sharing it)
        while state in ("offloaded", "uploading") and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
            state = await self._state(cid)
        rec["probe_state_after"] = state
        if mate is not None:
            # the daemon's answer for the mate: asked up by then with the probe
            mate_state = await self._state(mate)
            while mate_state in ("offloaded", "uploading") and time.monotonic() < deadline:
                await asyncio.sleep(SETTLE_POLL_S)
                mate_state = await self._state(mate)
            rec["mate_state_after"] = mate_state
        calls = await self._calls("NdisInvalidateOffload", shard=shard)
        rec["invalidate_calls"] = calls - invalidates
        rec["probe_after_ok"], _ = await self._round_trip(cid)
        # the fault is over at once; the workers' connections it moved are offloaded again
        rec["t_clear0"] = rec["t_clear1"] = time.monotonic()
        rec["cleared"] = True
        if state == "host":
            # offered as before the invalidate: the workers' connections it asked up are
            # offloaded again meanwhile and may fill the NIC, or a fault of the soak's own
            # refuse it (not judged, as before); refused with room, the daemon's to explain
            again = await self._offload_on(rec, cid, layer, shard)
            rec["probe_reoffloaded"] = again is None
            if again is not None:
                key = "probe_not_reoffloaded" if again.excused else "probe_reoffload_refused"
                rec[key] = again.why
            rec["probe_reoffloaded_ok"], _ = await self._round_trip(cid)
        await self.settle(rec, _first_nic(rec), shard)

    async def _probe_shard(self) -> int | None:
        """On a daemon of shards, the shard of the probes' client (stack.info `shard`), where
        its connections live and what stack.info says of its NIC is that shard's part (the
        daemon-wide `tcp` is the sum of every shard's, against one shard's
        `max_connections`); None on a daemon of one process."""
        info = await self._pc().stack_info()
        shard = info.get("shard") if info.get("shards") else None
        return None if shard is None else int(shard)

    async def _probe_offloaded(
        self, rec: Record, key: str, cid: int, where: str, shard: int | None
    ) -> bool:
        """Have the probe `cid` offloaded on the fault's layer (`_offload_on`): True once it
        is. A refusal that is no fault of the daemon's (no room, a pause, a host event, a fault
        of the soak's own) is said under `rec[key]` (not judged, spec §8): False. Any other is
        the daemon's to explain: ValueError (the fault is not injected, and the run fails)."""
        refused = await self._offload_on(rec, cid, rec["params"]["layer"], shard)
        if refused is None:
            return True
        text = f"the soak's probe connection could not be offloaded {where}: {refused.why}"
        if not refused.excused:
            raise ValueError(text)
        rec[key] = text
        return False

    async def _offload_on(
        self, rec: Record, cid: int, layer: str, shard: int | None
    ) -> Refusal | None:
        """Have the soak's connection `cid` offloaded on the NIC `layer`, offered again every
        SETTLE_POLL_S for PROBE_OFFLOAD_S while the NIC refuses it (full: its
        `max_connections`, spec §8; paused or out of service for another fault, spec §5.5; a
        fault of the soak's own failing its initiate). None once it is; else why not and
        whether that is no fault of the daemon's (`_judge_refusal`).

        On a NIC without room for it, an offer of the soak's may take the place a worker's
        connection just left and is about to take again (a churned or reset slot's reopen):
        from the first offer refused for no room (or one that got the NIC's last place) until
        the probes close, `rec["probe_no_room_t"]`, the workers' refusals for no room are the
        probe's to explain (`_refused_for_the_probe`), where stack.info says the NIC is full
        then (or says nothing of its room)."""
        start = time.monotonic()
        deadline = start + PROBE_OFFLOAD_S
        # the shard whose NIC the probe takes a place on (each shard has its own room)
        rec.setdefault("probe_shard", shard)
        exc: ChimneyError | None = None
        offered = False
        # what stack.info said of the NIC's room at each read of this refusal episode: read
        # before each offer and after a no-room answer, never in the moment the daemon decided
        seen: list[RoomRead] = []
        while True:
            info = await self._pc().tcp_info(cid)
            state = str(info.get("state", "?"))
            path = [str(x) for x in info.get("path") or []]
            if state == "offloaded" and (not path or layer in path):
                if "probe_no_room_t" not in rec and (await self._room([layer], shard))[1]:
                    await self._open_window(rec, start, layer, shard)  # the NIC's last place
                return None
            if state == "offloaded":  # pinned to `layer`, placed elsewhere: not there to judge
                why = f"offloaded through {' → '.join(path)}, not on {layer}"
                room, full = await self._room([layer], shard)
                return Refusal(f"{why}{room}", full)  # (placed elsewhere for want of room)
            if offered and (time.monotonic() >= deadline or self.interrupted.is_set()):
                # the last refusal, with what tcp.info says of it (`offload_refused`)
                return await self._judge_refusal(cid, exc, info, layer, shard, seen)
            if offered:
                await asyncio.sleep(SETTLE_POLL_S)
            offered = True
            seen.append(await self._room_read([layer], shard))
            sent = time.monotonic()
            try:
                await self._pc().tcp_offload(cid)
                exc = None  # answered, yet not offloaded: tcp.info's `offload_refused` says why
            except (NdisStatusError, InvalidState, InternalError) as err:
                # InternalError: a bug a raise_next of the soak's own planted (else an error)
                exc = err
                if isinstance(err, NdisStatusError) and err.status in NO_ENTRIES:
                    # no room for TCP opens the window only where stack.info agrees (or says
                    # nothing of the NIC's room): a NIC with TCP places free took no worker's
                    # for the probe, whatever it answered (spec §8). Its `tcp` counts no path
                    # or neighbor entries: those answers are taken as said
                    room, full = "", True
                    if err.status == TCP_ENTRIES:
                        seen.append(read := await self._room_read([layer], shard))
                        room, full = read.said, _room_moved(seen)
                    if (full or not room) and "probe_no_room_t" not in rec:
                        await self._open_window(rec, sent, layer, shard)

    async def _open_window(self, rec: Record, t: float, layer: str, shard: int | None) -> None:
        """From `t` the workers' refusals for no room may be the probe's doing (it may hold a
        place on `layer` one of theirs was about to take): `probe_no_room_t`. Only those a
        layer on the probe's way refused (`probe_way`: `layer` and the layers above it, as
        stack.info stacks them; None where it does not say) can be: a NIC beside it has its
        own room, which the probe took none of (`_refused_for_the_probe`)."""
        rec["probe_no_room_t"] = t
        info = await self._of_shard("stack_info", shard)
        names = [str(la.get("name")) for la in (info or {}).get("layers", [])]
        ways = {name: _above(info, name, layer) for name in names}
        if names and None not in ways.values():
            rec["probe_way"] = sorted({layer, *(n for n, on in ways.items() if on)})

    async def _judge_refusal(
        self,
        cid: int,
        exc: ChimneyError | None,
        info: Record,
        layer: str,
        shard: int | None,
        seen: Sequence[RoomRead] = (),
    ) -> Refusal:
        """Why the last offload of the soak's connection `cid` (answered `exc`; None: answered,
        not offloaded) was refused, and whether that is no fault of the daemon's: a status of
        no room or a pause (NO_ROOM), the host withholding the NIC for a host event (spec
        §6.2), stack.info saying the NIC (`layer`, and the layer tcp.info's `offload_refused`
        names, where it is another NIC) is full or out of service, or a fault the soak itself
        put in that failed this connection's initiate (fault.list `used`). Any other refusal of
        a connection the NIC has room for is the daemon's to explain: an InternalError no
        raise_next of the soak's explains is raised as the error it is. `seen`: the room of
        `layer` at the episode's earlier reads (`_room_moved`)."""
        said = info.get("offload_refused")
        said = said if isinstance(said, dict) else {}  # nil: a daemon without the extension
        status = exc.status if isinstance(exc, NdisStatusError) else said.get("status")
        reason = str(exc) if exc is not None else str(said.get("reason") or "")
        by = str(said.get("layer") or "")
        why = reason or f"tcp.offload left it {info.get('state', '?')}"
        if by:
            why += f" (refused by {by})"
        layers = [layer]
        if by and by != layer:
            # only a layer on the probe's way down to `layer` (the host, a MUX above it) can
            # refuse it for its own room: a full NIC beside it, or a layer the daemon does not
            # have, excuses nothing (`offload_refused.layer`, docs/rpc.md `tcp.info`)
            if _above(await self._of_shard("stack_info", shard), by, layer) is False:
                why += f" (not on its way to {layer})"
                if exc is None:
                    # an answer without an error: the status is that same claim's, not believed
                    status, reason = None, ""
            else:
                layers.append(by)
        read = await self._room_read(layers, shard)
        room, full = read.said, read.full
        ours = RoomRead(room, full, tuple(c for c in read.tcp if c[0] == layer))
        # no room for TCP is believed only where stack.info agrees (or says nothing of the
        # room), as where it opens the workers' window (`_offload_on`): a NIC with places free
        # at every read, the same number each time, refused a connection it could take (spec
        # §8). Full at any read of the episode, or its room changed during it, a place may have
        # been taken when the daemon decided and freed before the read: not judged. stack.info
        # counts no path or neighbor entries, and a pause is no matter of room: taken as said
        moved = status == TCP_ENTRIES and not full and _room_moved([*seen, ours])
        if moved:
            room += " (its room changed, or it was full, while it was offered)"
        no_room = status in NO_ROOM and (status != TCP_ENTRIES or full or not room or moved)
        if no_room or _withholds(exc, reason) or full:
            return Refusal(f"{why}{room}", True)
        own = await self._own_fault(cid, status, by, isinstance(exc, InternalError))
        if own is not None:
            return Refusal(f"{why}: {own}{room}", True)
        if isinstance(exc, InternalError):
            raise exc
        return Refusal(f"{why}{room}", False)

    async def _own_fault(self, cid: int, status: str | None, by: str, bug: bool) -> str | None:
        """The soak's own fault that refused the offload of its connection `cid` (a
        `refuse_offload`, or a `fail_next` or `raise_next` on an initiate, armed while it was
        offered), if fault.list `used` names `cid` among the connections whose call it failed
        (`failed`) or made raise (`raised`), with that status (a bug: INTERNAL) and on the layer
        tcp.info's `offload_refused` names (where it says). None: none did, or the daemon does
        not say."""
        assert self.control is not None
        mine = {
            int(r["fault_id"]): r
            for r in getattr(self, "layer_records", ())  # (LayerFaults keeps them)
            if r.get("fault_id") is not None
            and str((r.get("params") or {}).get("call", "")).startswith(INITIATE_CALL)
        }
        if not mine:
            return None
        try:
            listed = await self.control.fault_list(used=True)
        except ChimneyError:
            return None
        for f in listed:
            rec = mine.get(int(f.get("id", 0)))
            if rec is None or (f.get("kind") == "raise_next") is not bug:
                continue
            if not bug and (f.get("status") or "NDIS_STATUS_FAILURE") != status:
                continue
            for hit in f.get("raised" if bug else "failed") or []:
                if cid in (hit.get("conns") or []) and (not by or hit.get("layer") in (None, by)):
                    return f"the soak's own {rec['kind']} (fault {f['id']}) refused it"
        return None

    async def _room(self, layers: Sequence[str], shard: int | None) -> tuple[str, bool]:
        """What stack.info says of the room of the NICs `layers` (in `shard`), for a refusal's
        why, and whether it says one has none (full, or out of service in its MUX)."""
        read = await self._room_read(layers, shard)
        return read.said, read.full

    async def _room_read(self, layers: Sequence[str], shard: int | None) -> RoomRead:
        """`_room`, with the counts it read (`RoomRead.tcp`)."""
        info = await self._of_shard("stack_info", shard)
        said: list[str] = []
        full = False
        counts: list[tuple[str, Any]] = []
        for la in (info or {}).get("layers", []):
            if la.get("name") in layers and la.get("max_connections") is not None:
                name, tcp, most = la["name"], la.get("tcp"), la["max_connections"]
                full = full or (tcp is not None and int(tcp) >= int(most))
                said.append(f"{name} carries {tcp} of {most}")
                counts.append((str(name), tcp))
            lowers = la.get("lowers")
            for name in layers:
                if isinstance(lowers, dict) and not (lowers.get(name) or {}).get("in_service", 1):
                    said.append(f"{la.get('name')} has {name} out of service")
                    full = True
        text = f" (stack.info: {'; '.join(said)})" if said else ""
        return RoomRead(text, full, tuple(counts))

    async def _host_event(self, rec: Record, where: dict[str, int], probes: list[int]) -> None:
        """The host's own upload of a target for `/for` (spec §3.6.1, §6.2): nothing may stay
        offloaded on it, an offload there is refused (INVALID_STATE) until the clear, and
        after it offloads work again."""
        assert self.control is not None
        p = rec["params"]
        layer, event = p["layer"], p["event"]
        for_s = parse_duration(p["for"])
        shard = where.get("shard")
        rec["offloaded_before"] = await self.tcp_left(layer, shard)
        rec["nics_before"] = await self.nic_connections(shard)
        rec["t0"] = time.monotonic()
        rec["fault_id"] = fid = await self.control.fault_inject(
            "host_event", layer=layer, event=event, **where
        )
        rec["t1"] = time.monotonic()
        rec["injected"] = True
        self.say(f"chimney-soak: host event {event} on {layer} (fault {fid}) for {for_s:g} s")
        # a connection pinned to the target: its offload must be refused while the event holds
        cid = await self._probe(probes, target=layer)
        rec["probe_state_during"] = await self._state(cid)
        try:
            await self._pc().tcp_offload(cid)
            rec["probe_refused"] = None
        except InvalidState as exc:
            rec["probe_refused"] = str(exc)
        rec["probe_during_ok"], _ = await self._round_trip(cid)  # in the host stack
        listed = {f.get("id") for f in await self.control.fault_list()}
        rec["listed_while_armed"] = fid in listed
        await self.wait_or_interrupt(max(0.0, for_s - (time.monotonic() - rec["t1"])))
        rec["offloaded_at_end"] = await self.tcp_left(layer, shard)
        rec["nics_at_end"] = await self.nic_connections(shard)
        rec["t_clear0"] = time.monotonic()
        await self.control.fault_clear(fid)
        rec["t_clear1"] = time.monotonic()
        rec["cleared"] = True
        # the workers' connections back on the NIC first: on a NIC with no room to spare the
        # probe would take the place of one (refused OFFLOAD_TCP_ENTRIES, unexplained)
        await self.settle(rec, layer, shard)
        refused = await self._offload_on(rec, cid, layer, await self._probe_shard())
        # True: offloaded; False: refused with room on the NIC; None: no room, not judged
        rec["probe_offloaded_after"] = True
        if refused is not None:
            rec["probe_not_offloaded_after"] = refused.why
            rec["probe_offloaded_after"] = None if refused.excused else False
        rec["probe_after_ok"], _ = await self._round_trip(cid)

    async def _nic_up(self, rec: Record, where: dict[str, int], probes: list[int]) -> None:
        """`nic_down` with no clear, `/for` later `nic_up` (spec §5.5): the NIC is in service
        again at once, the nic_down fault still listed, and new connections may be placed on
        it (probes); nothing moves by itself."""
        assert self.control is not None
        p = rec["params"]
        layer = p["layer"]
        for_s = parse_duration(p["for"])
        shard = where.get("shard")
        rec["offloaded_before"] = await self.tcp_left(layer, shard)
        rec["nics_before"] = await self.nic_connections(shard)
        rec["t0"] = time.monotonic()
        # a NIC outage (faults.OUTAGES): the workers keep the stretches on a NIC it falls in
        # (state.py `prune_placements`), which outcomes `_each_left_its_nic` judges it on
        for inbox in self.ins:
            inbox.put({"type": "nic_outage", "t0": rec["t0"], "nic": layer, "shard": shard})
        rec["down_fault_id"] = down = await self.control.fault_inject(
            "nic_down", layer=layer, **where
        )
        rec["t1"] = time.monotonic()
        self.say(f"chimney-soak: {layer} taken out of service (fault {down}) for {for_s:g} s")
        await self.wait_or_interrupt(for_s)
        rec["offloaded_at_end"] = await self.tcp_left(layer, shard)
        rec["nics_at_end"] = await self.nic_connections(shard)
        rec["in_service_before_up"] = await self._in_service(layer, shard)
        rec["t_clear0"] = time.monotonic()
        rec["fault_id"] = await self.control.fault_inject("nic_up", layer=layer, **where)
        rec["t_clear1"] = time.monotonic()
        rec["injected"] = rec["cleared"] = True
        self.say(f"chimney-soak: {layer} back in service (nic_up)")
        deadline = time.monotonic() + SETTLE_MAX_S
        while not await self._in_service(layer, shard) and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
        rec["in_service_after_up"] = await self._in_service(layer, shard)
        rec["in_service_after_s"] = round(time.monotonic() - rec["t_clear1"], 3)
        rec["down_still_listed"] = down in {f.get("id") for f in await self.control.fault_list()}
        await self.settle(rec, layer, shard)
        paths: list[Record] = []
        for _ in range(NIC_UP_PROBES):
            cid = await self._probe(probes)
            ok, _ = await self._round_trip(cid)
            path = [str(x) for x in (await self._pc().tcp_info(cid)).get("path") or []]
            paths.append({"conn": cid, "path": path, "ok": ok})
            if layer in path:
                break
        rec["probe_paths"] = paths
        await self.control.fault_clear(down)
        rec["down_cleared"] = True

    async def _in_service(self, layer: str, shard: int | None) -> bool | None:
        """Whether the MUX above `layer` has it in service (stack.info); None: no MUX says."""
        assert self.control is not None
        info = await self.control.stack_info()
        if shard is not None:
            info = next((s for s in info.get("shards") or [] if s.get("shard") == shard), {})
        for la in info.get("layers", []):
            lowers = la.get("lowers")
            if la.get("kind") == "mux" and isinstance(lowers, dict) and layer in lowers:
                return bool(lowers[layer].get("in_service"))
        return None


def _left_armed(rec: Record) -> list[int]:
    """The faults `rec`'s injection put into the daemon and has not taken out: a nic_up's
    nic_down, a delay's or host_event's own (an invalidate is over at once)."""
    left = []
    if rec.get("down_fault_id") is not None and not rec.get("down_cleared"):
        left.append(int(rec["down_fault_id"]))
    armed = rec.get("fault_id") is not None and not rec.get("cleared")
    if rec["kind"] in ("delay", "host_event") and armed:
        left.append(int(rec["fault_id"]))
    return left


def _first_nic(rec: Record) -> str:
    return next(iter(rec.get("nics_before") or {}), "nic0")


# -- judgement -----------------------------------------------------------------------------------
def judge_probed(
    by_kind: dict[str, Record], layer_records: Sequence[Record], obs: dict[str, list[Record]]
) -> list[Any]:
    """Judge each PROBED fault injected; returns the windows in which host mode is theirs to
    explain (refusals, closes in host mode; outcomes._account_leftovers). Uploads and refusals
    of the workers' connections each explains are marked `explained_by` here, and must end
    offloaded again with data verified after."""
    from .outcomes import Window, not_judged, problem

    windows = []
    for rec in layer_records:
        if rec["kind"] not in PROBED or not rec.get("injected"):
            continue
        e = by_kind[rec["kind"]]
        if rec.get("probe_error"):
            problem(e, f"the probe failed: {rec['probe_error']}", rec)
        if rec["kind"] == "delay":
            _judge_delay(e, rec, problem)
            continue
        if rec["kind"] == "nic_up":
            _judge_nic_up(e, rec, problem)
            continue  # an outage too (faults.OUTAGES): outcomes judges the moves of its nic_down
        w = Window(rec)
        windows.append(w)
        if rec["kind"] == "invalidate":
            _judge_invalidate(e, rec, problem)
            moved = _explain(e, rec, w, obs, "unrequested", "InvalidState", problem, _in_shard)
            obj, sharing = rec["params"]["object"], rec.get("sharing_before") or 0
            mate_why = rec.get("mate_not_offloaded")
            if rec.get("mate_refused") is not None:
                # its NIC had room for it: the daemon refused the soak's own connection
                problem(
                    e,
                    f"{obj}: the soak's own second connection, which {w.layer} had room for, "
                    f"could not be offloaded: {rec['mate_refused']}",
                    rec,
                )
            elif obj in ("path", "neighbor") and mate_why is not None:
                # the soak's own second connection found no room on the NIC: the workers' there
                # at the invalidate must each be asked up (InvalidState); with none there and
                # none asked up, nothing shows either way
                stayed = _unasked_on_the_nic(rec, w, obs)
                if stayed:
                    conns = " ".join(str(p["conn"]) for p in stayed[:EXAMPLES_SHOWN])
                    problem(
                        e,
                        f"{obj}: {len(stayed)} of the workers' connections on {w.layer} sharing "
                        f"it, there at the invalidate, not asked up (InvalidState, spec §3.5): "
                        f"conn {conns}",
                        rec,
                        *stayed[:EXAMPLES_SHOWN],
                    )
                elif not moved:
                    text = (
                        f"{obj}: whether the connections sharing it were asked up (spec §3.5): "
                        f"the soak's own second connection could not be offloaded: {mate_why}"
                    )
                    not_judged(e, text, rec)
            elif obj in ("path", "neighbor") and "mate_state_after" in rec:
                # judged on the soak's own connection sharing it, there at the invalidate: a
                # count of the workers' taken before may include one that closed since
                _judge_mate(e, rec, w.layer, problem)
            elif obj in ("path", "neighbor") and sharing and not moved:
                problem(
                    e,
                    f"{obj}: none of the {sharing} other connection(s) on {w.layer} sharing it "
                    "was asked up (InvalidState, spec §3.5)",
                    rec,
                )
        else:
            _judge_host_event(e, rec, problem)
            moved = _explain(e, rec, w, obs, "unrequested", None, problem, _its_upload)
            if rec.get("offloaded_before") and not moved:
                problem(e, f"{w.layer}: {rec['offloaded_before']} offloaded, none uploaded", rec)
        _refusals(e, rec, w, obs, problem)
    for rec in layer_records:
        # (a probe never offloaded, its fault not injected, held no place)
        if rec["kind"] in PROBED and rec.get("injected") and rec.get("probe_no_room_t"):
            _refused_for_the_probe(by_kind[rec["kind"]], rec, obs, problem)
    return windows


def _refused_for_the_probe(
    e: Record, rec: Record, obs: dict[str, list[Record]], problem: Any
) -> None:
    """The workers' offloads refused for no room (a status of NO_ENTRIES, or at connect, which
    gives none) while a probe of the soak's held a place on a NIC it found full, from its
    first offer refused for no room until the probes closed: the probe may have taken the
    place a worker's connection left and was about to take again (a churned or reset slot's
    reopen, spec §8). Only a refusal by a layer on the probe's way (its NIC, a MUX or the
    host above it: `probe_way`), where tcp.info's `offload_refused` names one (`refused_by`).
    Not the daemon's doing; each must be offloaded again after."""
    closed = rec.get("probes_closed_t")
    start, end = float(rec["probe_no_room_t"]), float("inf") if closed is None else float(closed)
    shard = rec.get("probe_shard")
    for ep in obs.get("refusals", []):
        if ep.get("explained_by") or ep.get("withheld"):
            continue
        if None not in (shard, ep.get("shard")) and str(ep["shard"]) != str(shard):
            continue  # another shard's NIC, whose places the probe took none of
        if ep.get("status") not in (None, *NO_ENTRIES):
            continue
        way, by = rec.get("probe_way"), ep.get("refused_by")
        if way is not None and by is not None and by not in way:
            continue  # refused by a NIC off the probe's way, whose room it took none of
        sent = float(ep["t_first_sent"] if "t_first_sent" in ep else ep["t_first"])
        if not start <= float(ep["t_first"]) or sent > end:
            continue
        ep["explained_by"] = f"{rec['kind']} probe"
        e["refused_for_the_probe"] = e.get("refused_for_the_probe", 0) + 1
        if ep.get("offloaded_t") is None and not ep.get("continued"):
            text = f"conn {ep['conn']}: never offloaded again after the probe's place was free"
            problem(e, text, ep)


def _explain(
    e: Record,
    rec: Record,
    w: Any,
    obs: dict[str, list[Record]],
    name: str,
    reason: str | None,
    problem: Any,
    its: Any = None,
) -> int:
    """The uploads of `obs[name]` with `reason` asked in the window (and, with `its`, that
    `its(rec, upload)` says are the fault's) are this fault's: each must be offloaded again and
    carry verified data after. Returns how many."""
    mine = [
        u
        for u in obs.get(name, [])
        if not u.get("explained_by")
        and u.get("reason") == reason
        and w.covers(u["t"])
        and (its is None or its(rec, u))
    ]
    again = 0
    for u in mine:
        u["explained_by"] = rec["kind"]
        if u.get("reoffloaded_t") is None:
            problem(e, f"conn {u['conn']}: not offloaded again after {rec['kind']}", u)
        elif not u.get("done"):
            problem(e, f"conn {u['conn']}: no byte verified after its re-offload", u)
        else:
            again += 1
    e["connections_uploaded"] = e.get("connections_uploaded", 0) + len(mine)
    e["reoffloaded"] = e.get("reoffloaded", 0) + again
    e["verified_after"] = e.get("verified_after", 0) + sum(u.get("verified_after", 0) for u in mine)
    return len(mine)


def _unasked_on_the_nic(rec: Record, w: Any, obs: dict[str, list[Record]]) -> list[Record]:
    """The workers' connections on the invalidate's NIC, in its shard, when it was made (their
    stretches on it, `placements`, spanning `t0`) that stayed there past its window with no
    upload it explains: each shares the probe's path and neighbor (every echo peer on one
    host: `sharing_before` was counted) and must have been asked up (spec §3.5). One that left
    the NIC within the window (closed, reset, uploaded for a reason of its own) is not."""
    placements = obs.get("placements")
    if placements is None or rec.get("sharing_before") is None:
        return []
    asked = {
        u["conn"]
        for u in obs.get("unrequested", [])
        if u.get("explained_by") == rec["kind"] and w.covers(u["t"])
    }
    return [
        p
        for p in placements
        if p.get("nic") == w.layer
        and _in_shard(rec, p)
        and float(p["on"]) < w.start <= float(p["off"])
        and float(p["off"]) > w.end
        and p["conn"] not in asked
    ]


def _its_upload(rec: Record, u: Record) -> bool:
    """An upload with no retrieve is a host_event's only if the daemon says it made it for that
    event (`uploaded` `reason`, docs/faults.md `host_event`), from that NIC (where the soak
    knew the connection's path), in that fault's shard (`/shard=K`): anything else a daemon
    uploads unasked meanwhile stays unexplained."""
    p = rec["params"]
    if u.get("host_reason") != p["event"]:
        return False
    if u.get("came_from") and p["layer"] not in u["came_from"]:
        return False
    shard = p.get("shard")
    return shard in (None, "") or u.get("shard") is None or str(u["shard"]) == str(shard)


def _in_shard(rec: Record, u: Record) -> bool:
    """An upload is an invalidate's only in the probe's shard (`shard`, on a daemon of shards):
    another shard has objects of its own, which the invalidate did not touch."""
    shard = rec.get("shard")
    return shard is None or u.get("shard") is None or str(u["shard"]) == str(shard)


def _names_it(rec: Record, ep: Record) -> bool:
    """A refusal is a host_event's if the host named that event on that NIC (INVALID_STATE,
    soak/traffic.py `withheld`), or said nothing of why (an offload at connect: the worker sees
    only that the connection stayed in the host stack). A refusal naming no host event is not
    a host_event's; the other kinds take any refusal in their window."""
    if rec["kind"] != "host_event":
        return not ep.get("withheld")
    p = rec["params"]
    if ep.get("withheld"):
        return p["event"] in ep["withheld"].get(p["layer"], [])
    return ep.get("status") is None


def _refusals(e: Record, rec: Record, w: Any, obs: dict[str, list[Record]], problem: Any) -> None:
    """Offloads refused while the fault held are its own; each must be offloaded after."""
    for ep in obs.get("refusals", []):
        if ep.get("explained_by") or not w.covers_refusals(ep) or not _names_it(rec, ep):
            continue
        ep["explained_by"] = rec["kind"]
        e["offloads_refused"] = e.get("offloads_refused", 0) + 1
        if ep.get("offloaded_t") is None and not ep.get("continued"):
            problem(e, f"conn {ep['conn']}: never offloaded again after {rec['kind']}", ep)


def _judge_delay(e: Record, rec: Record, problem: Any) -> None:
    from .outcomes import not_judged

    p = rec["params"]
    ms = int(p["ms"])
    held = rec.get("probe_held_s")
    calls = rec.get("calls_while_armed")
    listed = rec.get("delayed_listed")
    # every call of that handler made while the delay is armed is held (docs/faults.md
    # `delay`): the daemon's count of them (stack.stats, the calls made into the layer)
    e["calls_held"] = e.get("calls_held", 0) + (calls or 0)
    # fault.list gives no count of the calls a delay held: said so, not made up
    e["daemon_says_delayed"] = int(listed) if listed is not None else "not said by fault.list"
    e.setdefault("probe_call_took_s", []).append(held)
    where = f"{p['call']} in {p['layer']}"
    unheld = rec.get("probe_not_offloaded")
    if unheld:
        # no room for the probe on the NIC (spec §8): no call of the soak's own went through
        not_judged(e, f"{where}: whether a call of the soak's own was held: {unheld}", rec)
    elif held is not None and held < ms / 1000.0 - HELD_SLACK_S:
        problem(e, f"{where}: a probe call made while delayed {ms} ms took {held:.3f} s", rec)
    if not calls and unheld and p["call"] == "MiniportInitiateOffload":
        # a full NIC: the host refuses every initiate before the layer is called (spec §8),
        # the probe's too, so no call came to be held
        not_judged(e, f"{where}: whether it held the calls made: none came, {unheld}", rec)
    elif not calls:
        problem(e, f"{where}: no call while the delay was armed: it delayed nothing", rec)
    if listed is not None and not listed:
        problem(e, f"{where}: the daemon says it delayed 0 calls (fault.list)", rec)
    if not rec.get("listed_while_armed"):
        problem(e, f"{where}: fault.list did not list the delay while it was armed", rec)
    for key in ("probe_before_ok", "probe_ok", "probe_after_ok"):
        if rec.get(key) is False:
            problem(e, f"{where}: probe bytes not echoed intact ({key})", rec)


def _judge_invalidate(e: Record, rec: Record, problem: Any) -> None:
    from .outcomes import not_judged

    obj = rec["params"]["object"]
    if rec.get("probe_state_before") != "offloaded":
        problem(e, f"the probe was not offloaded before ({rec.get('probe_state_before')})", rec)
        return
    calls = rec.get("invalidate_calls") or 0
    e["NdisInvalidateOffload_calls"] = e.get("NdisInvalidateOffload_calls", 0) + calls
    if not rec.get("invalidate_calls"):
        problem(e, f"{obj}: the host made no NdisInvalidateOffload (stack.stats)", rec)
    if rec.get("probe_state_after") != "host":
        state = rec.get("probe_state_after")
        problem(e, f"{obj}: the probe whose {obj} was invalidated stayed {state}", rec)
    elif rec.get("probe_not_reoffloaded"):
        # no room for it any more, or refused by a fault of the soak's own: not the daemon's
        text = f"{obj}: whether the probe is offloaded again after its upload: "
        not_judged(e, text + str(rec["probe_not_reoffloaded"]), rec)
    elif not rec.get("probe_reoffloaded"):
        why = rec.get("probe_reoffload_refused")
        problem(e, f"{obj}: the probe was not offloaded again after its upload: {why}", rec)
    for key in ("probe_before_ok", "probe_after_ok", "probe_reoffloaded_ok"):
        if rec.get(key) is False:
            problem(e, f"{obj}: probe bytes not echoed intact ({key})", rec)


def _judge_mate(e: Record, rec: Record, layer: str, problem: Any) -> None:
    """The probe's mate (a connection of the soak's own on its NIC to its echo peer) shares the
    invalidated path or neighbor: it must have been asked up with the probe (spec §3.5)."""
    from .outcomes import not_judged

    obj = rec["params"]["object"]
    before, after = rec.get("mate_state_before"), rec.get("mate_state_after")
    if before != "offloaded":
        # in the host stack before, it is there after whatever the daemon did: no sign either
        # way, and no fault of the daemon's that the soak's own connection was not offloaded
        text = f"{obj}: the soak's own connection sharing it was {before} before the invalidate"
        not_judged(e, text, rec)
    elif after != "host":
        problem(
            e,
            f"{obj}: none of the soak's own connections on {layer} sharing it was asked up: it "
            f"stayed {after} (InvalidState, spec §3.5)",
            rec,
        )


def _judge_host_event(e: Record, rec: Record, problem: Any) -> None:
    from .outcomes import not_judged

    p = rec["params"]
    what = f"{p['event']} on {p['layer']}"
    if rec.get("offloaded_at_end"):
        problem(e, f"{what}: {rec['offloaded_at_end']} connection(s) still offloaded on it", rec)
    elif "offloaded_at_end" in rec and rec["offloaded_at_end"] is None:
        # stack.info and stack.stats said nothing of it (no answer, no such layer): nothing
        # shows that the host uploaded everything on it (spec §3.6.1), so no pass
        problem(e, f"{what}: could not judge: the daemon did not say what is offloaded on it", rec)
    e["offload_refused_with"] = rec.get("probe_refused")
    if rec.get("probe_refused") is None and "probe_state_during" in rec:
        problem(e, f"{what}: an offload pinned to it was not refused while the event held", rec)
    elif rec.get("probe_refused") and p["event"] not in str(rec["probe_refused"]):
        problem(e, f"{what}: the refusal does not name the event: {rec['probe_refused']}", rec)
    if rec.get("probe_state_during") not in (None, "host"):
        problem(e, f"{what}: a connection pinned to it was {rec['probe_state_during']}", rec)
    if not rec.get("listed_while_armed"):
        problem(e, f"{what}: fault.list did not list it while it held", rec)
    if rec.get("probe_offloaded_after") is False:
        why = rec.get("probe_not_offloaded_after")
        problem(e, f"{what}: an offload to it still failed after fault.clear: {why}", rec)
    elif rec.get("probe_not_offloaded_after"):
        # the NIC full again with the workers' connections: no room to show it works
        text = f"{what}: whether an offload to it works after fault.clear: no room on it: "
        not_judged(e, text + str(rec["probe_not_offloaded_after"]), rec)
    for key in ("probe_during_ok", "probe_after_ok"):
        if rec.get(key) is False:
            problem(e, f"{what}: probe bytes not echoed intact ({key})", rec)


def _judge_nic_up(e: Record, rec: Record, problem: Any) -> None:
    layer = rec["params"]["layer"]
    if rec.get("in_service_before_up") is None:
        problem(e, f"{layer}: no MUX above it says whether it is in service (stack.info)", rec)
        return
    if rec.get("in_service_before_up"):
        problem(e, f"{layer}: still in service after nic_down", rec)
    if not rec.get("in_service_after_up"):
        problem(e, f"{layer}: not back in service after nic_up", rec)
    if not rec.get("down_still_listed"):
        problem(e, f"{layer}: nic_up cleared the nic_down fault (fault.list)", rec)
    paths = rec.get("probe_paths") or []
    if paths and not any(layer in (q.get("path") or []) for q in paths):
        problem(e, f"{layer}: no new connection placed on it after nic_up ({len(paths)})", rec)
    placed = [q["path"][-1] for q in paths if q.get("path")]
    e["new_connections_placed_on"] = " ".join(placed)
    if any(not q.get("ok") for q in paths):
        problem(e, f"{layer}: probe bytes not echoed intact after nic_up", rec)
    e["in_service_after_s"] = rec.get("in_service_after_s")
