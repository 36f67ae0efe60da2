"""What every driver layer shares: timers, a handle/context table, and injected faults.

Faults reach a layer as messages in its inbox (`arm_fault`, `disarm_fault`), like every other
change to a layer; the layer consults them where the fault kind applies (`take_failure` for
`fail_next`, the `downcall` wrapper for `delay` and `raise_next`).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, cast

from chimneyd.compiled import mypyc_attr
from chimneyd.ndis.blocks import BlockRole, OffloadBlock, walk
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.handles import HandleTable, NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import NdisStatus

from .fin_wait_2 import spend_held, ticks_per_second


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The one clock-driven service a layer gets: run `fn(*args)` in the layer's task later."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle: ...


#: Told of each call a `fail_next` fault failed: the layer's name, the call, and the
#: connections it concerned.
FailedHook = Callable[[str, str, list[int]], None]


@dataclass(slots=True)
class FailNext:
    """`fail_next` fault: after `skip` calls of `call` go through, the next `count` complete
    with `status` (contract). `MiniportInitiateOffload[path]` / `[neighbor]` fail path or
    neighbor blocks of an initiate; plain `MiniportInitiateOffload` fails TCP blocks.
    `failed`, when set, hears of each call it failed (fault.list `used`)."""

    fault_id: int
    call: str
    status: NdisStatus
    count: int
    skip: int = 0
    failed: FailedHook | None = None


@dataclass(slots=True)
class Delay:
    """`delay` fault: every `call` is held `ms` milliseconds before it runs."""

    fault_id: int
    call: str
    ms: int


@dataclass(slots=True)
class RaiseNext:
    """`raise_next` fault: after `skip` calls of `call` run, the next `count` raise
    `PlantedBug` at the entry of the layer's handler, as a bug in the driver would [EMU]."""

    fault_id: int
    call: str
    count: int
    skip: int = 0


class PlantedBug(Exception):
    """What a `raise_next` fault raises in a layer's handler: the runtime handles it as any
    exception a layer raises (docs/spec.md §6.3), and tells the fault what it hit."""

    def __init__(self, fault_id: int, call: str) -> None:
        super().__init__(f"raise_next fault {fault_id}: a bug in {call}")
        self.fault_id = fault_id


LayerFault = FailNext | Delay | RaiseNext
Counted = TypeVar("Counted", bound=FailNext | RaiseNext)  # bound: mypyc takes no value list


def _use_one(faults: list[Counted], call: str) -> Counted | None:
    """The counted fault (`fail_next`, `raise_next`) that takes this call of `call`, its count
    used up by one (and gone from `faults` at 0); None while it still lets `skip` calls by."""
    for fault in faults:
        if fault.call == call and fault.count > 0:
            if fault.skip:
                fault.skip -= 1
                return None
            fault.count -= 1
            if fault.count == 0:
                faults.remove(fault)
            return fault
    return None


F = TypeVar("F", bound=Callable[..., None])


class HeldCallFailed(Exception):
    """A call a `delay` fault held raised when it ran at last. It names that call, so the
    runtime reports and answers it as it would have had the call raised when it arrived (the
    connections it concerns are in its arguments, not in the timer's that released it)."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], error: Exception) -> None:
        super().__init__(f"held {getattr(fn, '__name__', '?')} failed")
        self.fn = fn
        self.call_args = args
        # what the call raised, kept here: the compiled `_release` was seen to leave
        # `__cause__` None (its `__context__` set) after `raise ... from`
        self.error = error


def downcall(fn: F) -> F:
    """Mark a handler NDIS calls from above (`Miniport*`): it honours `delay` and `raise_next`
    faults, and while anything is held, it queues behind it so the layer sees calls in the order
    they were made."""
    name = fn.__name__

    @functools.wraps(fn)
    def handler(self: DriverLayer, *args: Any) -> None:
        # a held call is released to `fn` itself: the handler's check is done by then (and a
        # closure naming itself is one a compiled build cannot make)
        if self.delays or self._held or self.raises:
            if self.held(name, fn, self, *args):
                return
            if self.raises:
                self.trip(name)
        fn(self, *args)

    handler._downcall = True  # type: ignore[attr-defined]
    return cast(F, handler)


#: The state calls NDIS fails for a layer that raised while serving them, and the completion
#: it uses. A terminate is not among them: a failed terminate means lost hardware state, which
#: the host learns from the abort the target indicates with it (spec §3.7), and a layer that
#: raised indicates nothing.
UNSERVED_STATE_CALLS: dict[str, str] = {
    "MiniportInitiateOffload": "NdisMInitiateOffloadComplete",
    "MiniportUpdateOffload": "NdisMUpdateOffloadComplete",
    "MiniportQueryOffload": "NdisMQueryOffloadStateComplete",
    "MiniportInvalidateOffload": "NdisMInvalidateOffloadComplete",
}

#: The I/O calls NDIS fails for a layer that raised while serving them, each as the layer kind
#: fails one (the method named here; the base class fails none).
UNSERVED_IO_CALLS: dict[str, str] = {
    "MiniportTcpOffloadSend": "fail_unserved_send",
    "MiniportTcpOffloadReceive": "fail_unserved_receive",
    "MiniportTcpOffloadDisconnect": "fail_unserved_disconnect",
    "MiniportTcpOffloadForward": "fail_unserved_forward",
}

#: The calls a `raise_next` fault can make a layer raise in: those a layer that raised is
#: recovered from (docs/spec.md §6.3), the terminate among them.
RAISABLE_CALLS = frozenset({*UNSERVED_STATE_CALLS, *UNSERVED_IO_CALLS, "MiniportTerminateOffload"})


@mypyc_attr(allow_interpreted_subclasses=True)
class DriverLayer(Layer):
    """A layer with injected timers, a handle/context table and fault hooks."""

    #: calls a `fail_next` fault can fail here (each consults `take_failure`)
    failable_calls: ClassVar[frozenset[str]] = frozenset()
    #: calls a `delay` fault can hold here: the `downcall` handlers, found per class
    delayable_calls: ClassVar[frozenset[str]] = frozenset()
    #: calls a `raise_next` fault can make raise here: the downcalls it is recovered from
    raisable_calls: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.delayable_calls = frozenset(
            name for name in dir(cls) if getattr(getattr(cls, name, None), "_downcall", False)
        )
        cls.raisable_calls = cls.delayable_calls & RAISABLE_CALLS

    def __init__(self, name: str, ndis: Ndis, timers: Timers, capacity: int) -> None:
        super().__init__(name, ndis)
        self.timers = timers
        # One table per layer: the live handles (protocol edge) and contexts (miniport edge).
        self.table: HandleTable[Any] = HandleTable(f"{name} handle/context table", capacity)
        self.fail_next: list[FailNext] = []
        self.delays: dict[str, Delay] = {}
        self.raises: list[RaiseNext] = []
        # held downcalls: (due ns, fault id or 0 when held only to keep order, call, fn, args)
        self._held: deque[tuple[int, int, str, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._release_timer: TimerHandle | None = None
        self._releasing = False

    def leftovers(self) -> dict[str, int]:
        """How many entries each of this layer's private tables holds, by table name: what
        must be back to 0 once every offload was terminated and every NBL came back (spec §9
        items 8 and 10). The handle/context table is the `handles` gauge already; a layer kind
        names the rest of its bookkeeping here (the conformance suite's drain check reads it)."""
        return {}

    # -- table bookkeeping kept in step with the `handles` gauge ---------------------------------
    def table_add(self, object_id: int, obj: Any) -> None:
        self.table.add(object_id, obj)
        self.stats.handles = len(self.table)

    def table_remove(self, object_id: int) -> Any:
        obj = self.table.remove(object_id)
        self.stats.handles = len(self.table)
        return obj

    # -- faults (messages from the engine) --------------------------------------------------------
    def arm_fault(self, fault: LayerFault) -> None:
        if isinstance(fault, FailNext):
            self.fail_next.append(fault)
        elif isinstance(fault, RaiseNext):
            self.raises.append(fault)
        else:
            self.delays[fault.call] = fault

    def disarm_fault(self, fault_id: int) -> None:
        """Clear a fault and undo all it holds: calls a `delay` held are released now, in the
        order they were made (spec: a delay changes timing only, never order)."""
        self.fail_next = [f for f in self.fail_next if f.fault_id != fault_id]
        self.raises = [f for f in self.raises if f.fault_id != fault_id]
        for call, delay in list(self.delays.items()):
            if delay.fault_id == fault_id:
                del self.delays[call]
        if any(held[1] == fault_id for held in self._held):
            now = self.ndis.clock()
            released: deque[tuple[int, int, str, Callable[..., Any], tuple[Any, ...]]] = deque()
            due = now
            for held_due, fid, call, fn, args in self._held:
                # what this fault held is due now, and so is what was held only to keep the
                # order (fault id 0) behind it; what another fault holds keeps its time, and
                # nothing overtakes what was held before it
                mine = fid in (fault_id, 0)
                due = max(due, now if mine else held_due)
                # from now on held only for the order: a later clear must not find it
                # still counted as this fault's
                released.append((due, 0 if mine else fid, call, fn, args))
            self._held = released
            self._schedule_release()

    def take_failure(
        self, call: str, *about: Any, lost: Callable[[], list[Any]] | None = None
    ) -> NdisStatus | None:
        """If a `fail_next` fault covers `call`, use up one count and return its status;
        `about` is what the failure concerns (an NBL chain, a block list, handles), for the
        fault to say which connections it failed; `lost`, asked only when the call fails,
        what else the failure takes down (the connections on a path or neighbor whose state
        it corrupts, spec §3.7)."""
        if not self.fail_next:
            return None
        fault = _use_one(self.fail_next, call)
        if fault is None:
            return None
        if fault.failed is not None:
            concerned = about if lost is None else (*about, *lost())
            fault.failed(self.name, call, sorted(conns_in(concerned)))
        return fault.status

    def trip(self, call: str) -> None:
        """If a `raise_next` fault covers `call`, use up one count and raise its bug: at the
        entry of the handler, or of a held call when it runs at last."""
        fault = _use_one(self.raises, call)
        if fault is not None:
            raise PlantedBug(fault.fault_id, call)

    # -- a handler that raised (engine `_layer_failed`) ------------------------------------------
    def keeps(self, root: OffloadBlock) -> bool:
        """Whether this layer holds `root` to finish later: passed on below, or waiting here.
        A layer that can do either says so (an IM's call entry, a target's paused initiates)."""
        return False

    def fail_unserved(self, call: str, args: tuple[Any, ...]) -> bool:
        """This layer raised in `call(*args)`: if the block list it was given is still its
        own — neither completed, passed on nor kept — complete it with NDIS_STATUS_FAILURE,
        as a layer refusing the call would (spec §3.2.4: new and linking blocks fail,
        placeholders name nothing to fail). Everything above then unwinds as it does for a
        refused call, so the connection stays usable in host mode; without it the host
        waited for ever and every later request on the connection, its close too, with it.
        A send, receive, disconnect or forward is failed the way the layer kind fails one
        (`fail_unserved_send`, `_receive`, `_disconnect`, `_forward`), so that its NBLs
        complete exactly once. True if it did."""
        io = UNSERVED_IO_CALLS.get(call)
        if io is not None:
            # (context, head[, flags]), after the layer itself for a held call
            at = next(i for i, a in enumerate(args) if isinstance(a, NetBufferList))
            ctx, head = args[at - 1], args[at]
            nbls = list(iter_chain(head))
            if not all(n.source_bindings and n.source_bindings[-1].lower is self for n in nbls):
                return False  # some went on, or came back: the rest is the layer's to finish
            return bool(getattr(self, io)(ctx, head))
        completion = UNSERVED_STATE_CALLS.get(call)
        if completion is None and call != "MiniportTerminateOffload":
            return False
        # a held call's arguments start with the layer itself
        root: OffloadBlock | None = next((a for a in args if isinstance(a, OffloadBlock)), None)
        if root is None:
            return False
        # taken before `binding.lower is not self` below narrows `self` to a plain Layer
        fail_terminate = self.fail_unserved_terminate
        binding = root.source_handle
        if binding is None or binding.lower is not self or self.keeps(root):
            return False
        if completion is None:  # a terminate: the layer kind says whether it can fail one
            return fail_terminate(root)
        failure = NdisStatus.NDIS_STATUS_FAILURE
        success = NdisStatus.NDIS_STATUS_SUCCESS
        for block in walk(root):
            block.status = success if block.role() is BlockRole.PLACEHOLDER else failure
        getattr(self.ndis, completion)(self, root)
        return True

    def fail_unserved_terminate(self, root: OffloadBlock) -> bool:
        """Fail a terminate this layer raised on, neither completed, passed on nor kept. A
        failed terminate means lost hardware state, which the host learns from the abort
        indicated with it (spec §3.7): only a layer kind that can indicate it says how."""
        return False

    def fail_unserved_send(self, ctx: Any, head: NetBufferList) -> bool:
        """Fail a send this layer raised on, every NBL of it still here: as the layer fails a
        send it cannot make (a hole in the stream, spec §4.1), after the sends before it, and
        only if the layer keeps none of it. A layer kind that can fail sends says how."""
        return False

    def fail_unserved_receive(self, ctx: Any, head: NetBufferList) -> bool:
        """Fail receive requests this layer raised on, none of them kept or passed on: with
        NDIS_STATUS_REQUEST_ABORTED, after which the host posts no new request on its own
        (one failing again would go round for ever). A layer kind that can says how."""
        return False

    def fail_unserved_disconnect(self, ctx: Any, nbl: NetBufferList) -> bool:
        """Fail a disconnect this layer raised on, not kept: as the layer refuses one
        (NDIS_STATUS_FAILURE, no FIN sent), after the sends before it. A layer kind that can
        says how."""
        return False

    def fail_unserved_forward(self, ctx: Any, head: NetBufferList) -> bool:
        """Fail forwarded segments this layer raised on, none of them passed on: with
        NDIS_STATUS_UPLOAD_IN_PROGRESS, so the host keeps them and processes them itself
        after an upload (spec §4.6), and ask for that upload: the target never got those
        bytes, so the connection cannot go on offloaded past them. A layer kind that can
        says how."""
        return False

    def held(self, call: str, fn: Callable[..., Any], *args: Any) -> bool:
        """If a `delay` fault covers `call`, or any call is already held, run `fn(*args)` later
        and return True.

        One FIFO for every downcall of the layer: a held send is never overtaken by the
        terminate or disconnect the host issued after it, so a delay changes timing only,
        never the order of calls, even when the fault is cleared while calls are held.
        """
        if self._releasing or not (self.delays or self._held):
            return False
        delay = self.delays.get(call)
        if delay is None and not self._held:
            return False
        now = self.ndis.clock()
        due = now + (delay.ms * 1_000_000 if delay else 0)
        if call == "MiniportInitiateOffload":
            # its FIN_WAIT_2 timers run while it is held (spec §8, `spend_held`)
            fn = functools.update_wrapper(functools.partial(_spend_then, fn, now), fn)
        if self._held:
            due = max(due, self._held[-1][0])
        self._held.append((due, delay.fault_id if delay else 0, call, fn, args))
        if len(self._held) == 1:
            self._schedule_release()
        return True

    def _schedule_release(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        if self._held:
            wait = max(0, self._held[0][0] - self.ndis.clock()) / 1e9
            self._release_timer = self.timers.call_later(wait, self._release)

    def _release(self) -> None:
        self._release_timer = None
        now = self.ndis.clock()
        self._releasing = True
        try:
            # everything due by now runs in this turn, in order
            while self._held and self._held[0][0] <= now:
                _, _, call, fn, args = self._held.popleft()
                try:
                    if self.raises:
                        self.trip(call)
                    fn(*args)
                except Exception as exc:
                    # the calls still due run in the next turn (`finally`), in order
                    raise HeldCallFailed(fn, args, exc) from exc
        finally:
            self._releasing = False
            self._schedule_release()


def _spend_then(fn: Callable[..., Any], since: int, layer: DriverLayer, root: OffloadBlock) -> None:
    """A held initiate released: what it was held comes off its FIN_WAIT_2 timers first."""
    spend_held(root, layer.ndis.clock() - since, ticks_per_second(layer))
    fn(layer, root)


def conns_in(args: tuple[Any, ...]) -> set[int]:
    """The connections a layer message concerns, found in its arguments (the hop traces of its
    NBLs, handles and blocks): for error reports and what a fault hit."""
    conns: set[int] = set()
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool):
            continue
        trace = None
        if isinstance(arg, NetBufferList | NdisOffloadHandle):
            trace = arg.trace
        elif isinstance(arg, OffloadBlock):
            for block in walk(arg):
                for handle in (block.offload_handle, block.ndis_offload_handle):
                    if handle is not None and handle.trace is not None:
                        conns.add(handle.trace.conn_id)
        else:
            trace = getattr(arg, "trace", None)
        if trace is not None:
            conns.add(trace.conn_id)
    return conns
