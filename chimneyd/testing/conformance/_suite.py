"""The suite's machinery: checks and their registry, running them, and what counts as a
failure (an unmet expectation, a layer raising, or a stack not drained at the end)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from chimneyd.drivers.base import DriverLayer
from chimneyd.ndis.status import NdisStatus, TcpDisconnectFlags

from ..records import COMPLETION_KIND
from ..stack import MakeStack, Stack

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE
UPLOADING = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
ABORTED = S.NDIS_STATUS_REQUEST_ABORTED
GRACEFUL = TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
ABORTIVE = TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE
INDICATIONS = frozenset({"ProtocolTcpOffloadEvent", "ProtocolTcpOffloadReceiveIndicate"})
CHIMNEY_UP = INDICATIONS | frozenset(COMPLETION_KIND)


# ================================================================================================
# results
# ================================================================================================
class ConformanceFailure(AssertionError):
    """One expectation of one check not met."""


@dataclass(frozen=True, slots=True)
class CheckFailure:
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


class LayerKindNonconformance(AssertionError):
    """Some checks of the suite failed; `failures` says which and why."""

    def __init__(self, failures: Sequence[CheckFailure]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(f"{len(self.failures)} conformance check(s) failed:\n{lines}")

    @property
    def failed(self) -> set[str]:
        return {f.check for f in self.failures}


@dataclass(frozen=True, slots=True)
class Check:
    """One check: a name, the role it applies to ("middle" or "bottom"), and its body."""

    name: str
    role: str
    body: Callable[[Stack], None]

    @property
    def doc(self) -> str:
        return (self.body.__doc__ or "").strip().split("\n\n")[0]

    def __str__(self) -> str:
        return self.name


CHECKS: list[Check] = []


def layer_check(role: str) -> Callable[[Callable[[Stack], None]], Callable[[Stack], None]]:
    def register(body: Callable[[Stack], None]) -> Callable[[Stack], None]:
        CHECKS.append(Check(body.__name__, role, body))
        return body

    return register


def layer_kind_checks(role: str | None = None) -> list[Check]:
    """The checks for a role ("middle", "bottom"), or all of them."""
    return [c for c in CHECKS if role is None or c.role == role]


def run_check(check: Check, make_stack: MakeStack) -> CheckFailure | None:
    """Run one check on a fresh stack, then move its clock past every timer and require the
    stack drained (spec §9)."""
    stack = make_stack()
    if stack.role != check.role:
        raise ValueError(f"{check.name} is a {check.role} check; the stack is {stack.role}")
    try:
        check.body(stack)
        expect_drained(stack)
    except ConformanceFailure as exc:
        return CheckFailure(check.name, str(exc))
    except Exception as exc:  # a layer that raises fails the check it raised in
        return CheckFailure(check.name, f"raised {type(exc).__name__}: {exc}")
    return None


def run_layer_kind_checks(
    make_stack: MakeStack, only: Iterable[str] | None = None
) -> list[CheckFailure]:
    """Every check for the role `make_stack`'s stacks give (or only those named)."""
    role = make_stack().role
    wanted = set(only) if only is not None else None
    failures = []
    for check in layer_kind_checks(role):
        if wanted is not None and check.name not in wanted:
            continue
        failure = run_check(check, make_stack)
        if failure is not None:
            failures.append(failure)
    return failures


def check_layer_kind(make_stack: MakeStack, only: Iterable[str] | None = None) -> None:
    """Raise `LayerKindNonconformance` unless the kind in `make_stack`'s stacks passes every
    check of its role (like `trio.testing.check_one_way_stream`)."""
    failures = run_layer_kind_checks(make_stack, only)
    if failures:
        raise LayerKindNonconformance(failures)


# ================================================================================================
# expectations
# ================================================================================================
def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceFailure(message)


def expect_same(actual: Sequence[object], expected: Sequence[object], what: str) -> None:
    """The same objects, in the same order (identity, not equality)."""
    same = len(actual) == len(expected) and all(
        a is e for a, e in zip(actual, expected, strict=True)
    )
    expect(same, f"{what}: got {list(actual)!r}, expected the same objects {list(expected)!r}")


#: How far the clock moves after a check's body before the stack must count as drained: well
#: past every timer a layer kind arms (the target's push timer, `TcpPushTicks`, 500 ms by
#: default; a `delay` fault's release; FIN_WAIT_2's 120 s, spec §8), so that what a timer left
#: armed raises after the last terminate happens while the suite still looks (spec §3.6.4,
#: §9 item 8).
TIMER_HORIZON_S = 600.0


def expect_drained(st: Stack) -> None:
    st.run()
    try:
        st.advance(TIMER_HORIZON_S)
    except Exception as exc:  # e.g. the broker refusing an event on a dead handle
        raise ConformanceFailure(
            f"a timer that fired after every terminate raised {type(exc).__name__}: {exc} "
            f"(spec §3.6.4, §9 item 8)"
        ) from exc
    problems = st.drain_problems()
    for layer in st.under_test:
        if isinstance(layer, DriverLayer):
            left = {name: n for name, n in layer.leftovers().items() if n}
            if left:
                problems.append(f"{layer.name} still holds entries in {left} (spec §9 item 8)")
    if st.clock.pending:
        problems.append(
            f"{st.clock.pending} timer(s) still armed {TIMER_HORIZON_S:g} s after every terminate"
        )
    top = st.top
    issued = Counter((op, id(root)) for op, root in top.issued)
    done = Counter((c.op, id(c.root)) for c in top.state_completions)
    if issued != done:
        problems.append(
            "state operations and their completions do not pair up one to one with the same "
            "root (spec §3.1 item 6)"
        )
    twice = [n for n, k in Counter(id(c.nbl) for c in top.completions).items() if k > 1]
    if twice:
        problems.append(
            f"{len(twice)} NBL(s) completed to {top.name} more than once (spec §9 item 1)"
        )
    if st.bottom is not None:
        if st.bottom.pending_state():
            problems.append(f"{len(st.bottom.pending_state())} state operation(s) left below")
        if st.bottom.pending():
            problems.append(f"{len(st.bottom.pending())} NBL(s) left with the layer below")
    for wire in st.wires:
        # a closed socket sends no more events, so only an open one must have come home
        if wire.home is not None and not wire.closed and wire.owner is not wire.home:
            problems.append(f"{wire!r} still belongs to {wire.owner!r} after every terminate")
    expect(not problems, "not drained after every terminate: " + "; ".join(problems))
