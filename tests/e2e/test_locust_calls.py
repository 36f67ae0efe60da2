"""What a Locust user's connection costs beyond its load, and how long its stop may wait
(clients/chimney_client/locust_user.py). A connection is one `tcp.connect`: the user hears its
own connections' events through one `events.subscribe("*")` a session, and the connect's
`offloaded` comes before its answer (rpc.md `events.subscribe`), so no `tcp.info` asks what the
event already said. The `tcp.close` of a stopping user (Locust waits for `on_stop`) is bounded
by the settings, not a constant: `--chimney-stop-close-s`, or the stop's grace by default.
Anything that imports locust runs in a child process (see locust_checks.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.e2e.support import ROOT, child_env


def _check(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.locust_checks", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _rpc_requests(result: dict[str, Any]) -> dict[str, int]:
    return {e["name"]: e["requests"] for e in result["entries"] if e["type"] == "rpc"}


def test_a_connection_costs_one_call_beyond_its_echo() -> None:
    # `corrupt`: the first connection's echo comes back damaged, the user opens a second one
    # on the same session
    result = _check("user", "corrupt")
    calls = _rpc_requests(result)
    assert calls["tcp.connect"] == 2, calls
    assert calls.get("events.subscribe") == 1, calls  # once a session, not once a connection
    assert "tcp.info" not in calls, calls  # its `offloaded` event said it
    assert "tcp.offload" not in calls, calls


def test_a_connection_heard_of_as_not_offloaded_is_still_checked() -> None:
    """No `offloaded` before the connect's answer: the user asks, and offloads it itself so a
    refusal is seen with its NDIS status (`offload_refused`)."""
    result = _check("user", "refused")
    calls = _rpc_requests(result)
    assert calls["tcp.info"] == 1, calls
    # the refused `tcp.offload` is counted under its event only
    assert any(e["name"] == "offload_refused" for e in result["entries"]), result


def test_a_connection_uploaded_after_its_offloaded_event_is_still_checked() -> None:
    """`offloaded` then `uploaded`, both before the connect's answer (the host took it back in
    the same turn: a target that failed, a `host_event`): the connection is in the host stack
    when the user gets its id, so the user asks, and offloads it again, as it did when it
    always asked `tcp.info`."""
    result = _check("user", "uploaded")
    calls = _rpc_requests(result)
    assert calls.get("tcp.info") == 1, calls
    assert calls.get("tcp.offload") == 1, calls
    assert not result["errors"], result


def test_the_stop_close_bound_comes_from_the_settings() -> None:
    default = _check("limits", "{}")
    assert default["stop_close_limit_s"] == default["stop_grace_s"] == 5.0, default
    # a shorter op timeout: what may be outstanding at the stop, and the close, shrink with it
    short = _check("limits", json.dumps({"op_timeout_s": 2.0}))
    assert short["stop_close_limit_s"] == 2.0, short
    given = _check("limits", json.dumps({"stop_close_s": 12.5}))
    assert given["stop_close_limit_s"] == 12.5, given
    # the user's own stop sends its close with that bound
    result = _check("user", "clean")
    assert result["close_timeouts"] == [default["stop_close_limit_s"]], result


def test_the_stop_close_option_is_parsed_and_checked() -> None:
    result = _check("options", "--chimney-stop-close-s=2.5")
    assert result["settings"]["stop_close_s"] == 2.5, result
    for bad in ("0", "-1", "nan"):
        refused = _check("options", f"--chimney-stop-close-s={bad}")
        assert refused["exit"] == 2, refused
        assert "argument --chimney-stop-close-s: must be " in refused["error"], refused


def test_a_wait_too_long_for_a_socket_timeout_is_refused_at_start() -> None:
    """A bound past what a socket timeout holds (`settimeout` raises OverflowError, not a
    `ChimneyError`: the stopping user's `tcp.close`, or every call under the op timeout, would
    raise out of the user) is a usage error, as nan is: at most a day."""
    for option in ("--chimney-stop-close-s", "--chimney-op-timeout-s"):
        refused = _check("options", f"{option}=1e10")
        assert refused["exit"] == 2, refused
        assert (
            f"argument {option}: must be a finite number from 0.001 to 86400" in refused["error"]
        ), refused
        day = _check("options", f"{option}=86400")
        assert day["exit"] is None, day
