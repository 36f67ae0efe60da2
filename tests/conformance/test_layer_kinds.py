"""Every layer kind passes the conformance suite of its role (chimneyd.testing.conformance):
the pass-through IM in the middle of a stack, alone and two stacked; the teaming MUX in the
middle in every position (right under the top, under a pass-through IM, over one); the offload
target at the bottom over in-memory wires, alone and as two or one NICs under a MUX. No
sockets."""

from __future__ import annotations

import functools

import pytest

from chimneyd.testing.conformance import (
    Check,
    check_layer_kind,
    layer_kind_checks,
    run_check,
)
from chimneyd.testing.factories import (
    loopback_target_stack,
    mux_stack,
    passthrough_stack,
    teamed_target_stack,
)
from chimneyd.testing.stack import MakeStack

KINDS: dict[str, MakeStack] = {
    "passthrough": passthrough_stack,
    "passthrough-x2": functools.partial(passthrough_stack, depth=2),
    "loopback-target": loopback_target_stack,
    "mux": functools.partial(mux_stack, "top"),
    "mux-under-im": functools.partial(mux_stack, "under-im"),
    "mux-over-im": functools.partial(mux_stack, "over-im"),
    "mux-hash": functools.partial(mux_stack, "top", policy="hash"),
    "teamed-targets": teamed_target_stack,
    "teamed-target-x1": functools.partial(teamed_target_stack, 1),
    "teamed-targets-x3-least-loaded": functools.partial(
        teamed_target_stack, 3, policy="least-loaded"
    ),
}

CASES = [
    pytest.param(make, check, id=f"{kind}-{check.name}")
    for kind, make in KINDS.items()
    for check in layer_kind_checks(make().role)
]


@pytest.mark.parametrize(("make", "check"), CASES)
def test_kind_passes_check(make: MakeStack, check: Check) -> None:
    failure = run_check(check, make)
    assert failure is None, str(failure)


@pytest.mark.parametrize("kind", list(KINDS))
def test_check_layer_kind_accepts_each_kind(kind: str) -> None:
    check_layer_kind(KINDS[kind])


def test_both_roles_have_checks_with_docstrings() -> None:
    for role in ("middle", "bottom"):
        checks = layer_kind_checks(role)
        assert len(checks) >= 10
        assert all("spec §" in c.doc for c in checks), [
            c.name for c in checks if "spec §" not in c.doc
        ]


def test_a_check_refuses_a_stack_of_the_other_role() -> None:
    (middle_check, *_) = layer_kind_checks("middle")
    with pytest.raises(ValueError, match="middle check"):
        run_check(middle_check, loopback_target_stack)


def test_the_checks_pass_however_many_handles_came_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stub connection's local port once followed the process's handle count, and past
    25,535 handles (a long test run) the MUX's hash policy could not pack it."""
    import itertools

    from chimneyd.ndis import handles

    monkeypatch.setattr(handles, "_ids", itertools.count(70_000))
    (check,) = [
        c
        for c in layer_kind_checks("middle")
        if c.name == "state_operations_complete_only_after_the_lower_completion"
    ]
    assert run_check(check, KINDS["mux-hash"]) is None
