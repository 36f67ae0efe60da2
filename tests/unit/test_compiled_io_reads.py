"""The compiled build's I/O path reads its constants and types the way mypyc makes cheap.

Under callgrind on the compiled build (`make bench COMPILED=1 ARGS="--profile instructions"`,
README "The compiled build") a verified echo round spent ~21,000 instructions in
`CPyDict_GetItem` and ~28,000 in `PyObject_GetAttr`, the generic paths, from compiled code:

- a module-level name that is not `Final` is read through the module's dict on every use
  (~140 instructions); a `Final` one is a C value. The hop trace alone read five such names per
  record, eight records a round;
- `x.__class__` is a generic attribute read (~170); `type(x)` is one C macro (the source build
  runs both at about the same speed);
- every attribute read of an object of an interpreted module's class is generic: the broker
  read six of `NdisOffloadHandle` per NBL sent down, so `chimneyd/ndis/handles.py` is compiled.

These tests read the sources (both builds ship them), so they hold on either build.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
LISTED = ROOT / "deploy" / "compiled-modules.txt"

#: module-level constants the compiled modules read on every verified echo round (by the
#: functions named), which must be `Final`
PER_ROUND_CONSTANTS: dict[str, tuple[str, ...]] = {
    # HopTrace.record_pair: eight records a round
    "chimneyd/ndis/trace.py": ("NO_STATUS", "HAS_STATUS", "_NARROW", "_NARROW_SIZE"),
    # Ndis._io_down and _io_complete: each NBL sent down and completed
    "chimneyd/ndis/broker.py": ("PENDING", "_IO", "_IO_DOWN"),
    # NetBufferList.__init__
    "chimneyd/ndis/nbl.py": ("_nbl_ids", "_PENDING"),
    # Session.dispatch, respond: every request
    "chimneyd/rpc/session.py": ("_ANSWERS", "_Future", "_partial", "DAEMON_WIDE_METHODS"),
    # Decoder.feed_raw, bytes_response_head: every request and data answer
    "chimneyd/rpc/codec.py": ("REQUEST", "RESPONSE", "MSGID_LIMIT", "OUT_OF_LINE", "BIN_LIMIT"),
    # tcp_send, tcp_recv: their parameters' bounds
    "chimneyd/rpc/methods.py": ("FUTURE_METHODS", "OPEN_METHODS", "_MAX_ID", "_MAX_RECV"),
    # the host's send completion and receive (spare buffers)
    "chimneyd/drivers/host/send.py": ("SUCCESS",),
    "chimneyd/drivers/host/receive.py": ("SUCCESS", "SPARE_BYTES", "_SPARE_SCAN"),
    # the target's send and receive
    "chimneyd/drivers/target/send.py": ("SUCCESS", "ABORTED", "_ADVISING"),
    "chimneyd/drivers/target/receive.py": ("SUCCESS", "_ORDINARY_PATH"),
    # WireSocket._outq: every acknowledgement poll
    "chimneyd/runtime/wire.py": ("_INT", "_OUTQ"),
}


def _compiled_modules() -> list[str]:
    lines = [ln.strip() for ln in LISTED.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _final_names(path: str) -> set[str]:
    out: set[str] = set()
    for node in ast.parse((ROOT / path).read_text()).body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and ast.unparse(node.annotation).split("[")[0] in ("Final", "typing.Final")
        ):
            out.add(node.target.id)
    return out


def test_per_round_constants_are_final() -> None:
    missing = [
        f"{path}: {name}"
        for path, names in PER_ROUND_CONSTANTS.items()
        for name in names
        if name not in _final_names(path)
    ]
    assert not missing, f"read per round as a dict lookup on the compiled build: {missing}"


def test_compiled_modules_read_no_class_attribute() -> None:
    reads = [
        f"{path}:{node.lineno}"
        for path in _compiled_modules()
        for node in ast.walk(ast.parse((ROOT / path).read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "__class__"
        and isinstance(node.ctx, ast.Load)
    ]
    assert not reads, f"`x.__class__` (a generic attribute read when compiled): {reads}"


def test_the_offload_handle_is_compiled() -> None:
    # the broker reads the handle's context, binding, trace and ids for every NBL sent down
    assert "chimneyd/ndis/handles.py" in _compiled_modules()


def _record_pair() -> ast.FunctionDef:
    tree = ast.parse((ROOT / "chimneyd/ndis/trace.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "record_pair":
            return node
    raise AssertionError("HopTrace.record_pair not found in chimneyd/ndis/trace.py")


def test_the_hop_record_packs_the_clock_and_ids_as_objects() -> None:
    # a value typed `int` is a tagged C integer in compiled code: the clock's reading (an int
    # object) and the NBL id (`int | tuple`, an object) were unboxed, then boxed again for
    # `struct.pack`, a new int object each (an allocation and a free), twice per record, eight
    # records a round. Typed `object`, they reach `pack` as they came
    fn = _record_pair()
    declared = {
        node.target.id: ast.unparse(node.annotation)
        for node in ast.walk(fn)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    packs = [
        node
        for node in ast.walk(fn)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "pack"
    ]
    assert len(packs) == 1, f"record_pair should pack one narrow record: {len(packs)} packs"
    args = packs[0].args
    t_ns, ids = args[0], args[-1]
    clock = t_ns.func.id if isinstance(t_ns, ast.Call) and isinstance(t_ns.func, ast.Name) else ""
    assert declared.get(clock) == "Callable[[], object]", (
        f"the clock's reading goes to pack through an int: {ast.unparse(t_ns)}"
    )
    name = ids.id if isinstance(ids, ast.Name) else ""
    assert declared.get(name) == "object", (
        f"the NBL id goes to pack through an int: {ast.unparse(ids)}"
    )


def test_a_full_ring_drops_its_oldest_record_by_a_slice_made_once() -> None:
    # `del buf[:n]` makes a slice object (and boxes n) per record dropped
    made = [
        ast.unparse(node)
        for node in ast.walk(_record_pair())
        if isinstance(node, ast.Delete)
        for target in node.targets
        if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice)
    ]
    assert not made, f"a slice made per record: {made}"


def test_the_broker_calls_the_hop_trace_natively() -> None:
    # `handle.trace` and `nbl.trace` are typed `Any`: a method called on one is a Python call
    # on the compiled build (the method looked up by name, its int arguments boxed, parsed and
    # unboxed again), ~700 instructions a record, eight records a round. A local typed
    # `HopTrace` makes it a native call
    tree = ast.parse((ROOT / "chimneyd/ndis/broker.py").read_text())
    untyped = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        typed = {
            node.target.id
            for node in ast.walk(fn)
            if isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and "HopTrace" in ast.unparse(node.annotation)
        }
        untyped += [
            f"{fn.name}:{node.lineno}"
            for node in ast.walk(fn)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "record_pair"
            and not (isinstance(node.func.value, ast.Name) and node.func.value.id in typed)
        ]
    assert not untyped, f"record_pair called on an untyped trace (a Python call): {untyped}"


def _functions(path: str, names: tuple[str, ...]) -> dict[str, ast.FunctionDef]:
    tree = ast.parse((ROOT / path).read_text())
    found = {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name in names
    }
    assert set(found) == set(names), f"{path}: not found: {set(names) - set(found)}"
    return found


#: the functions a verified echo round runs that unpack an NBL's `protocol_reserved` (`Any`)
RESERVED_READERS: dict[str, tuple[str, ...]] = {
    "chimneyd/drivers/host/receive.py": ("receive_complete",),
    "chimneyd/drivers/host/send.py": ("finish_send", "complete"),
}


def test_the_host_types_what_its_nbls_hold() -> None:
    # `tcb, buffer = nbl.protocol_reserved` makes `tcb` an `Any`: each of the ten TCB fields
    # `receive_complete` reads or writes (and the send's four in `finish_send`) was then a
    # generic attribute access on the compiled build, every round. Unpacked from a local
    # typed `tuple[Tcb, memoryview]` (`tuple[AppSend, int, int]`), they are native
    untyped = [
        f"{path}: {name}:{node.lineno}"
        for path, names in RESERVED_READERS.items()
        for name, fn in _functions(path, names).items()
        for node in ast.walk(fn)
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Tuple)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "protocol_reserved"
    ]
    assert not untyped, f"`protocol_reserved` unpacked untyped (generic reads): {untyped}"


#: the broker's functions every NBL routed passes through
BROKER_ROUTING = (
    "_io_down",
    "_io_complete",
    "NdisOffloadTcpReceiveReturn",
    "NdisReturnReceiveIndication",
)


def test_the_broker_reads_layer_edges_and_bindings_natively() -> None:
    # `has_miniport_edge` is a `ClassVar`: read off a layer, it is a generic attribute read
    # (through the type) on the compiled build; `Layer.miniport_edge` is the same flag as a
    # native field. A binding taken off `source_bindings` (`list[Any]`) into an untyped local
    # is an `Any`, its `lower` and `upper` generic reads
    fns = _functions("chimneyd/ndis/broker.py", BROKER_ROUTING)
    generic = [
        f"{name}:{node.lineno}"
        for name, fn in fns.items()
        for node in ast.walk(fn)
        if isinstance(node, ast.Attribute) and node.attr == "has_miniport_edge"
    ]
    for name, fn in fns.items():
        lists = {
            t.id
            for node in ast.walk(fn)
            if isinstance(node, ast.Assign) and ast.unparse(node.value).endswith(".source_bindings")
            for t in node.targets
            if isinstance(t, ast.Name)
        }

        def takes(node: ast.AST, lists: set[str] = lists) -> bool:
            """`xs[i]` or `xs.pop()` of an NBL's `source_bindings`, or of a local bound to it."""
            if isinstance(node, ast.Subscript):
                seq = node.value
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "pop"
            ):
                seq = node.func.value
            else:
                return False
            return (isinstance(seq, ast.Name) and seq.id in lists) or (
                isinstance(seq, ast.Attribute) and seq.attr == "source_bindings"
            )

        generic += [
            f"{name}:{node.lineno}"
            for node in ast.walk(fn)
            if isinstance(node, ast.Assign) and any(takes(sub) for sub in ast.walk(node.value))
        ]
    assert not generic, f"a layer's edge or a binding read generically: {generic}"


def test_the_engine_and_session_read_natively_per_request() -> None:
    # `self.host.inbox` is `Any` (a layer's inbox): `.push(...)` on it was a Python call (the
    # method looked up by name, the wrapper parsing its arguments), twice a round; a local
    # typed `LayerTask` makes it a native call. `self.config.max_in_flight` read the frozen
    # RPC config (a class of an interpreted module) generically on every request
    untyped = []
    for name, fn in _functions("chimneyd/engine.py", ("_request", "start_send")).items():
        typed = {
            node.target.id
            for node in ast.walk(fn)
            if isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and ast.unparse(node.annotation) == "LayerTask"
        }
        untyped += [
            f"engine.py {name}:{node.lineno}"
            for node in ast.walk(fn)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "push"
            and not (isinstance(node.func.value, ast.Name) and node.func.value.id in typed)
        ]
    dispatch = _functions("chimneyd/rpc/session.py", ("dispatch",))["dispatch"]
    untyped += [
        f"session.py dispatch:{node.lineno}"
        for node in ast.walk(dispatch)
        if isinstance(node, ast.Attribute) and node.attr == "config"
    ]
    assert not untyped, f"read generically on every request: {untyped}"
