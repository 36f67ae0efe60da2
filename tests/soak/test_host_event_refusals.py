"""A `host_event` as the soak's workers meet it (docs/faults.md `host_event`, spec §6.2): while
the event holds, the host refuses an offload to its NIC `INVALID_STATE` naming the event — a
refusal, which the host_event must explain, not an error; and it explains only what it did:
the uploads the daemon says it made for that event on that NIC, and refusals naming it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimney_client.errors import InvalidState
from chimney_client.soak.channels import LocalChannel
from chimney_client.soak.conn import Conn
from chimney_client.soak.outcomes import judge
from chimney_client.soak.parsing import PayloadDist
from chimney_client.soak.state import Rpc, WorkerConfig
from chimney_client.soak.worker import Worker

#: What the daemon's host answers an offload to a NIC a host event withholds (host_reasons).
WITHHELD = "the host withholds offloads to nic0: media_disconnect (spec §6.2)"


def _worker() -> Worker:
    cfg = WorkerConfig(
        index=0,
        rpc="127.0.0.1:1",
        token=None,
        peers=(("127.0.0.1", 2),),
        peer_controls=(("127.0.0.1", 3),),
        slots=(0,),
        rate=1.0,
        payload=PayloadDist("fixed", (1024,)),
        think_ms=0.0,
        upload_share=0.0,
        churn=0.0,
        close="graceful",
        conns_per_rpc=1,
        ops_per_rpc=1,
        seed=1,
    )
    return Worker(cfg, LocalChannel(), LocalChannel())


class _RefusingClient:
    """`tcp_offload` answers INVALID_STATE with `message`."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def tcp_offload(self, cid: int) -> dict[str, Any]:
        raise InvalidState(4, self.message)


async def _offload(how: str, message: str) -> tuple[Worker, Conn]:
    w = _worker()
    conn = Conn(7, seed=7, slot=0, peer=0, now=0.0)
    conn.state = "host"
    conn.needs_offload = True
    w.by_id[7] = conn
    rpc = Rpc.__new__(Rpc)
    rpc.client = _RefusingClient(message)  # type: ignore[assignment]
    rpc.sem = asyncio.Semaphore(1)
    await getattr(w, how)(rpc, conn)
    return w, conn


@pytest.mark.parametrize("how", ["reoffload", "planned_offload"])
async def test_an_offload_a_host_event_withholds_is_a_refusal_not_an_error(how: str) -> None:
    w, conn = await _offload(how, WITHHELD)
    assert w.c["errors"] == 0, w.errors
    (ep,) = w.obs["refusals"]
    assert ep["status"] == "INVALID_STATE" and ep["withheld"] == {"nic0": ["media_disconnect"]}
    assert conn.state == "host" and conn.needs_offload  # it owes an offload after the clear


@pytest.mark.parametrize("how", ["reoffload", "planned_offload"])
async def test_any_other_invalid_state_answer_to_an_offload_is_still_an_error(how: str) -> None:
    w, _ = await _offload(how, "connection 7 is closing")
    assert w.c["errors"] == 1 and not w.obs["refusals"], w.errors


# -- the judge: what a host_event explains -------------------------------------------------------
def _host_event_rec(**over: Any) -> dict[str, Any]:
    rec = {
        "tag": 1,
        "kind": "host_event",
        "params": {"layer": "nic0", "event": "media_disconnect", "for": "3s"},
        "injected": True,
        "t0": 10.0,
        "t1": 10.01,
        "t_clear0": 13.0,
        "t_clear1": 13.01,
        "cleared": True,
        "offloaded_before": 1,
        "offloaded_at_end": 0,
        "probe_state_during": "host",
        "probe_refused": WITHHELD,
        "probe_during_ok": True,
        "probe_after_ok": True,
        "probe_offloaded_after": True,
        "listed_while_armed": True,
    }
    return {**rec, **over}


def _upload(conn: int, t: float, **over: Any) -> dict[str, Any]:
    rec = {"conn": conn, "t": t, "reason": None, "reoffloaded_t": t + 3.5, "done": True}
    rec |= {"verified_after": 100, "host_reason": "media_disconnect", "came_from": ["nic0"]}
    return {**rec, **over}


def _refusal(conn: int, t: float, **over: Any) -> dict[str, Any]:
    rec = {"conn": conn, "at": "reoffload", "t_first": t, "t_last": t + 1, "offloaded_t": 14.0}
    rec |= {"status": "INVALID_STATE", "withheld": {"nic0": ["media_disconnect"]}}
    return {**rec, **over}


def _judged(obs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (e,), host = judge([_host_event_rec()], [], obs)
    return e, host


def test_a_host_event_explains_its_uploads_and_the_refusals_naming_it() -> None:
    e, host = _judged({"unrequested": [_upload(1, 10.2)], "refusals": [_refusal(1, 10.5)]})
    assert e["ok"], e["problems"]
    assert e["connections_uploaded"] == 1 and e["offloads_refused"] == 1
    assert host["unexplained"] == 0, host


@pytest.mark.parametrize(
    ("upload", "why"),
    [
        # the daemon said this upload was for something else (its `uploaded` event's reason)
        ({"host_reason": "terminate"}, "uploaded unasked (no retrieve)"),
        # on another NIC than the event's
        ({"came_from": ["team0", "nic1"]}, "uploaded unasked (no retrieve)"),
    ],
)
def test_a_host_event_does_not_explain_an_upload_it_did_not_make(
    upload: dict[str, Any], why: str
) -> None:
    obs = {"unrequested": [_upload(1, 10.2), _upload(2, 10.3, **upload)]}
    e, host = _judged(obs)
    assert e["connections_uploaded"] == 1, e
    assert host["unexplained"] == 1 and why in host["unexplained_examples"][0], host


@pytest.mark.parametrize(
    "refusal",
    [
        {"withheld": {"nic0": ["power_down"]}},  # another event
        {"withheld": {"nic1": ["media_disconnect"]}},  # another NIC
        {"t_first": 20.0, "t_last": 21.0},  # after the event was cleared
    ],
)
def test_a_host_event_does_not_explain_a_refusal_that_does_not_name_it(
    refusal: dict[str, Any],
) -> None:
    obs = {"unrequested": [_upload(1, 10.2)], "refusals": [_refusal(2, 10.5, **refusal)]}
    e, host = _judged(obs)
    assert e.get("offloads_refused", 0) == 0, e
    assert host["unexplained"] == 1, host
    assert "(INVALID_STATE)" in host["unexplained_examples"][0], host


def test_the_daemons_reason_and_nic_of_an_upload_nobody_asked_for_are_kept() -> None:
    w = _worker()
    conn = Conn(7, seed=7, slot=0, peer=0, now=0.0)
    conn.state = "offloaded"
    conn.path = ["tcpip", "nic0"]
    w.by_id[7] = conn
    w.apply_event(conn, "uploaded", {"reason": "power_down"})
    (rec,) = w.obs["unrequested"]
    assert rec["reason"] is None and rec["host_reason"] == "power_down"
    assert rec["came_from"] == ["tcpip", "nic0"]
