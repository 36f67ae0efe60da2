"""The worker's rules, on its own objects (no sockets): what a reset may excuse, how the daemon's
events classify uploads, refusal episodes and their outcome, and time per state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from chimney_client.errors import InternalError, RpcTimeout
from chimney_client.soak import judge, state
from chimney_client.soak.channels import LocalChannel
from chimney_client.soak.conn import Conn, SlotBroken, outcome_done, watch
from chimney_client.soak.parsing import PayloadDist
from chimney_client.soak.state import Rpc, WorkerConfig
from chimney_client.soak.worker import Worker


class _Clock:
    """Stands in for the `time` module of `state`: a scripted monotonic clock."""

    def __init__(self, ticks: Iterator[float]) -> None:
        self.monotonic = lambda: next(ticks)


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


def _conn(w: Worker, cid: int = 7, state: str = "offloaded") -> Conn:
    conn = Conn(cid, seed=cid, slot=0, peer=0, now=0.0)
    conn.state = state
    w.by_id[cid] = conn
    return conn


def _reset(conn: Conn, delivered: int | None) -> dict:
    rec = {"kind": "peer_reset", "injected": True, "conn": conn.cid, "delivered": delivered}
    conn.faults.append(rec)
    conn.expect_abort = True
    conn.aborted = True
    return rec


# -- what a reset may excuse ----------------------------------------------------------------------
def test_a_reset_excuses_only_bytes_it_cut_off() -> None:
    w = _worker()
    conn = _conn(w)
    conn.sent, conn.verified = 10_000, 6_000
    rec = _reset(conn, delivered=6_000)  # the peer had echoed 6000 bytes back before its RST
    w.judge_loss(conn, aborted=True)
    assert w.c["lost_before_reset"] == 0 and "lost_before_reset" not in rec
    assert w.c["unverified_on_close"] == 0  # the 4000 after the cut are excused


def test_a_reset_does_not_hide_bytes_lost_before_it() -> None:
    w = _worker()
    conn = _conn(w)
    conn.sent, conn.verified = 10_000, 5_500
    rec = _reset(conn, delivered=6_000)  # 500 echoed before the RST never reached the soak
    w.judge_loss(conn, aborted=True)
    assert w.c["lost_before_reset"] == 500 and rec["lost_before_reset"] == 500
    w.finish_fault_records()
    faults, _ = judge([], [rec], {})
    assert not faults[0]["ok"]
    assert any("500 byte(s) echoed before the RST" in p for p in faults[0]["problems"])


def test_an_abort_no_fault_asked_for_is_unexpected() -> None:
    """Counted, and recorded for the judge (only a terminate's bug may explain it), which
    fails the run on it otherwise (test_verdict)."""
    w = _worker()
    conn = _conn(w)
    w.apply_event(conn, "TcpIndicateAbort", {})
    w.judge_loss(conn, aborted=True)
    assert w.c["unexpected_aborts"] == 1 and w.c["aborts_while_closing"] == 0
    (rec,) = w.obs["aborts"]
    assert rec is conn.abort and rec["conn"] == 7 and rec["unexpected"] and not rec["closing"]


def test_an_abort_during_our_own_close_is_recorded_as_such_and_one_aimed_at_not_at_all() -> None:
    w = _worker()
    closing = _conn(w, 7)
    closing.own_upload = True  # tcp.close (or a planned upload) under way
    w.apply_event(closing, "TcpIndicateAbort", {})
    aimed = _conn(w, 8)
    _reset(aimed, delivered=0)
    aimed.aborted = False
    w.apply_event(aimed, "TcpIndicateAbort", {})
    assert w.c["aborts_while_closing"] == 1
    assert [(r["conn"], r["closing"]) for r in w.obs["aborts"]] == [(7, True)]


def test_bytes_never_echoed_on_a_live_connection_are_counted() -> None:
    w = _worker()
    conn = _conn(w)
    conn.sent, conn.verified = 4096, 1024
    w.judge_loss(conn, aborted=False)
    assert w.c["unverified_on_close"] == 3072


# -- events: who asked for an upload ---------------------------------------------------------------
def test_an_upload_nobody_asked_for_is_recorded_as_unrequested() -> None:
    w = _worker()
    conn = _conn(w)
    conn.sending = True
    w.apply_event(conn, "uploaded", {"reason": "terminate"})
    assert conn.state == "host" and conn.needs_offload
    (rec,) = w.obs["unrequested"]
    assert rec["sending"] and rec["reoffloaded_t"] is None
    assert conn.wants_more()  # it owes a re-offload and data after it


def test_upload_all_is_recorded_for_the_target_failure() -> None:
    w = _worker()
    conn = _conn(w)
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": "NDIS_STATUS_UPLOAD_ALL"})
    assert conn.state == "uploading"
    w.apply_event(conn, "uploaded", {"reason": "terminate"})
    assert w.c["nic_uploads"] == 1 and len(w.obs["upload_all"]) == 1
    assert conn.host_cause == "target_failure"


def test_the_hosts_own_reoffload_after_a_failover_counts_as_offloaded_again() -> None:
    """At RESUME the host offloads again what a paused NIC (or a MUX moving a NIC's
    connections) asked up; its `offloaded` event must close the upload record as our own
    tcp.offload would, with the new path."""
    w = _worker()
    conn = _conn(w)
    conn.path = ["tcpip", "team0", "nic1"]
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": "UploadRequested", "mandatory": True})
    w.apply_event(conn, "uploaded", {})
    (rec,) = w.obs["unrequested"]
    assert rec["came_from"] == ["tcpip", "team0", "nic1"] and rec["asked"] > 0
    assert conn.needs_offload and rec["reoffloaded_t"] is None
    conn.verified = 50
    w.apply_event(conn, "offloaded", {"path": ["tcpip", "team0", "nic0"]})
    assert conn.state == "offloaded" and not conn.needs_offload
    assert rec["reoffloaded_t"] is not None and rec["verify_from"] == 50
    assert rec["path"] == conn.path == ["tcpip", "team0", "nic0"]


def test_our_own_upload_and_the_terminate_after_an_abort_are_not_recorded() -> None:
    w = _worker()
    conn = _conn(w)
    conn.own_upload = True
    w.apply_event(conn, "uploaded", {})
    assert conn.host_cause == "planned_upload" and not conn.needs_offload
    other = _conn(w, 8)
    w.apply_event(other, "TcpIndicateAbort", {})
    w.apply_event(other, "uploaded", {})
    assert other.state == "aborted"
    assert w.obs["unrequested"] == [] and w.obs["upload_all"] == []


def test_a_retrieve_is_followed_to_its_reoffload_and_data_after() -> None:
    w = _worker()
    conn = _conn(w)
    rec = {"kind": "retrieve", "injected": True, "conn": conn.cid}
    conn.faults.append(rec)
    watch(conn, rec, None)
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": "UploadRequested", "mandatory": True})
    w.apply_event(conn, "uploaded", {})
    assert rec["uploaded"] and not outcome_done(rec)
    conn.verified = 100
    w.offloaded_again(conn, ["tcpip", "im0", "nic0"])
    assert rec["reoffloaded_t"] is not None and rec["verify_from"] == 100
    assert not outcome_done(rec)  # nothing verified after the re-offload yet
    conn.verified = 200
    assert outcome_done(rec) and not conn.wants_more()


# -- refusals and time per state -------------------------------------------------------------------
def test_refusals_make_one_episode_until_the_offload_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([10.0, 10.0, 10.5, 10.5, 11.0, 12.0, 13.0])
    monkeypatch.setattr(state, "time", _Clock(clock))
    w = _worker()
    conn = _conn(w, state="host")
    conn.since = 9.0
    w.refused(conn, "connect", None)  # t=10
    assert w.obs["refusals"][0]["t_last_sent"] == 10.0  # no sending time: the answer's
    w.refused(conn, "reoffload", "NDIS_STATUS_FAILURE", 10.2)  # t=10.5, sent at 10.2
    (ep,) = w.obs["refusals"]
    assert ep["attempts"] == 2 and ep["t_first"] == 10.0 and ep["t_last"] == 10.5
    assert ep["t_last_sent"] == 10.2 and ep["t_first_sent"] == 10.0  # the first kept
    assert ep["status"] == "NDIS_STATUS_FAILURE"
    w.offloaded_again(conn, None)  # t=11 (its records), 12 (the state change)
    assert conn.state == "offloaded" and conn.refusal is None
    assert ep["offloaded_t"] == 11.0
    # 9 → 10 in host mode while connecting, 10 → 12 because its offload was refused
    assert w.state_s["host"] == 3.0
    assert w.host_s_by_cause == {"connect": 1.0, "refused_offload": 2.0}


def test_a_refusal_for_another_reason_starts_another_episode() -> None:
    w = _worker()
    conn = _conn(w, state="host")
    w.refused(conn, "reoffload", "NDIS_STATUS_OFFLOAD_PAUSE")
    w.refused(conn, "reoffload", "NDIS_STATUS_OFFLOAD_PAUSE")
    w.refused(conn, "reoffload", "NDIS_STATUS_FAILURE")
    paused, failed = w.obs["refusals"]
    assert paused["attempts"] == 2 and paused["continued"]
    assert failed["attempts"] == 1 and failed["status"] == "NDIS_STATUS_FAILURE"
    assert [r for r in conn.watch if r is paused] == []  # its outcome is the next episode's
    assert conn.host_cause == "refused_offload"  # PAUSE said target_failure, FAILURE says this
    w.offloaded_again(conn, None)
    assert failed["offloaded_t"] is not None


def test_time_is_accounted_by_state_and_host_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([5.0, 6.0, 9.0, 10.0])
    monkeypatch.setattr(state, "time", _Clock(clock))
    w = _worker()
    conn = _conn(w)
    w.move(conn, "uploading")  # offloaded 0 → 5
    w.move(conn, "host", "planned_upload")  # uploading 5 → 6
    w.move(conn, "offloaded")  # host 6 → 9
    w.move(conn, "closing")  # offloaded 9 → 10
    assert w.state_s == {"offloaded": 6.0, "host": 3.0, "uploading": 1.0}
    assert w.host_s_by_cause == {"planned_upload": 3.0}


def test_host_time_after_a_retrieve_nobody_asked_for_is_not_labelled_retrieve() -> None:
    """A teaming MUX moving a connection (rebalance, a NIC taken out) asks for its upload with
    TcpIndicateRetrieve UploadRequested (spec §5.2), on a connection the soak aimed no retrieve
    at: the host time that follows is an unrequested retrieve's, not the `retrieve` fault's."""
    w = _worker()
    moved = _conn(w, 7)
    w.apply_event(moved, "TcpIndicateRetrieve", {"reason": "UploadRequested", "mandatory": True})
    w.apply_event(moved, "uploaded", {"reason": "terminate"})
    assert (moved.state, moved.host_cause) == ("host", "unrequested_retrieve")
    (rec,) = w.obs["unrequested"]  # judged as before: a layer fault must explain it
    assert rec["reason"] == "UploadRequested"
    aimed = _conn(w, 8)
    aimed.faults.append({"kind": "retrieve", "injected": True, "conn": 8})
    w.apply_event(aimed, "TcpIndicateRetrieve", {"reason": "UploadRequested", "mandatory": True})
    w.apply_event(aimed, "uploaded", {"reason": "terminate"})
    assert (aimed.state, aimed.host_cause) == ("host", "retrieve")


# -- a stall is injected by its connection's slot, between two round trips -------------------------
def _stall(w: Worker, conn: Conn) -> dict:
    rec = {"kind": "stall_peer", "injected": False, "conn": conn.cid, "t0": 0.0}
    conn.faults.append(rec)
    return rec


async def test_a_stall_waits_for_its_slot_to_inject_it_and_marks_the_next_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _worker()
    conn = _conn(w)
    rec = _stall(w, conn)
    injected: list[int] = []

    async def daemon_fault(c: Conn, r: dict, params: dict) -> None:
        injected.append(c.cid)
        r["stall_end"] = r["t0"] + 1.5

    monkeypatch.setattr(w, "daemon_fault", daemon_fault)
    napping = asyncio.create_task(w.think(conn, 60.0))
    await asyncio.sleep(0)
    ordering = asyncio.create_task(w.stall_through_slot(conn, rec, {"ms": "1500"}))
    await asyncio.wait_for(napping, 5)  # the think pause was cut short
    assert injected == [] and not ordering.done()  # nothing injected behind the slot's back
    assert conn.stall_order is not None
    await w.stall_now(conn)
    await asyncio.wait_for(ordering, 5)
    assert injected == [conn.cid] and conn.stall_order is None
    assert rec["probe"] == "next" and rec["t0"] <= rec["t1"] < rec["stall_end"]


async def test_the_round_trip_after_a_stall_does_not_wait_for_the_injections_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon stalls the socket when it reads the injection; an answer that comes after
    the stall's end must not hold back the round trip that shows the stall."""
    w = _worker()
    conn = _conn(w)
    rec = _stall(w, conn)
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    queued: list[int] = []

    async def daemon_fault(c: Conn, r: dict, params: dict) -> None:
        queued.append(c.cid)  # the request is queued by the first step, as the client does
        r["stall_end"] = r["t0"] + 1.5
        await answer

    monkeypatch.setattr(w, "daemon_fault", daemon_fault)
    ordering = asyncio.create_task(w.stall_through_slot(conn, rec, {"ms": "1500"}))
    await asyncio.sleep(0)
    await asyncio.wait_for(w.stall_now(conn), 5)
    # the injection is asked for, unanswered, and the next round trip may begin
    assert queued == [conn.cid] and rec["probe"] == "next" and "t1" not in rec
    assert not ordering.done()
    answer.set_result(None)
    await asyncio.wait_for(ordering, 5)
    assert rec["t0"] <= rec["t1"]


async def test_a_failed_stall_injection_fails_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _worker()
    conn = _conn(w)
    rec = _stall(w, conn)

    async def daemon_fault(c: Conn, r: dict, params: dict) -> None:
        await asyncio.sleep(0)
        raise LookupError("not offloaded")

    monkeypatch.setattr(w, "daemon_fault", daemon_fault)
    ordering = asyncio.create_task(w.stall_through_slot(conn, rec, {"ms": "1500"}))
    await asyncio.sleep(0)
    await w.stall_now(conn)
    with pytest.raises(LookupError, match="not offloaded"):
        await asyncio.wait_for(ordering, 5)
    assert "t1" not in rec


async def test_a_stall_for_a_connection_that_closes_goes_elsewhere() -> None:
    w = _worker()
    conn = _conn(w)
    rec = _stall(w, conn)
    ordering = asyncio.create_task(w.stall_through_slot(conn, rec, {"ms": "1500"}))
    await asyncio.sleep(0)
    w.drop_stall_order(conn)
    with pytest.raises(LookupError, match="closed before its stall"):
        await asyncio.wait_for(ordering, 5)
    assert conn.stall_order is None and "probe" not in rec


class _InfoClient:
    """Stands in for the RPC client: `tcp.info` of an aborted connection."""

    def __init__(self, bytes_received: int) -> None:
        self.bytes_received = bytes_received

    async def tcp_info(self, cid: int) -> dict:
        return {"state": "closed", "bytes_received": self.bytes_received}


@pytest.mark.parametrize(("read", "lost"), [(6_000, 0), (6_500, 500)])
async def test_a_daemon_reset_excuses_only_what_the_daemon_never_read(read: int, lost: int) -> None:
    """The daemon reset its own socket: bytes it had read from it (tcp.info bytes_received)
    must have come back; the rest of what was sent went with the socket."""
    w = _worker()
    conn = _conn(w)
    rec = {"kind": "daemon_reset", "injected": True, "conn": conn.cid}
    conn.faults.append(rec)
    conn.expect_abort = conn.aborted = True
    conn.sent, conn.verified = 10_000, 6_000
    await w.read_before_own_reset(Rpc(_InfoClient(read), 1), conn)  # type: ignore[arg-type]
    assert rec["delivered"] == read
    w.judge_loss(conn, aborted=True)
    assert w.c["lost_before_reset"] == lost and rec.get("lost_before_reset", 0) == lost
    assert w.c["unverified_on_close"] == 0 and w.c["unexpected_aborts"] == 0


class _OffloadingClient:
    """`tcp_offload` answers once `answer` is set, after the test applied its events."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    async def tcp_offload(self, cid: int) -> dict:
        return await self.answer


@pytest.mark.parametrize("how", ["reoffload", "planned_offload"])
async def test_an_offload_answer_read_after_an_upload_all_is_stale(how: str) -> None:
    """The daemon answers our tcp.offload, then the NIC fails and UPLOAD_ALL uploads the
    connection. The notifications are handled as they arrive, the answer only when its task
    runs: the connection is in host mode, and the answer must not count as the re-offload
    the outage waits for (it would read as offloaded while the NIC was failed)."""
    w = _worker()
    conn = _conn(w, state="host")
    conn.needs_offload = True
    client = _OffloadingClient()
    rpc = Rpc.__new__(Rpc)
    rpc.client = client  # type: ignore[assignment]
    rpc.sem = asyncio.Semaphore(1)
    task = asyncio.ensure_future(getattr(w, how)(rpc, conn))
    await asyncio.sleep(0)  # the request is out
    w.apply_event(conn, "offloaded", {"path": ["tcpip", "im0", "nic0"]})
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": "NDIS_STATUS_UPLOAD_ALL"})
    w.apply_event(conn, "uploaded", {})
    (rec,) = w.obs["upload_all"]
    client.answer.set_result({"state": "offloaded", "path": ["tcpip", "im0", "nic0"]})
    await task
    assert conn.state == "host" and conn.needs_offload
    assert rec["reoffloaded_t"] is None  # the host offloads it again at RESUME
    w.apply_event(conn, "offloaded", {"path": ["tcpip", "im0", "nic0"]})
    assert rec["reoffloaded_t"] is not None and conn.state == "offloaded"


# -- a new connection's state: tcp.info and the events around it -------------------------------------
UPLOAD_ALL = [
    ("TcpIndicateRetrieve", {"reason": "NDIS_STATUS_UPLOAD_ALL", "mandatory": True}),
    ("uploaded", {}),
]


class _Daemon:
    """tcp.connect and tcp.info of a daemon whose NIC fails around them: `before` are the
    events handled before the connect's answer reaches the worker's task, `during` those
    handled while tcp.info is answered, `state` what that answer says."""

    def __init__(self, w: Worker, before: list, during: list, state: str) -> None:
        self.w, self.before, self.during, self.state = w, before, during, state

    async def tcp_connect(self, host: str, port: int) -> int:
        for event, info in self.before:
            self.w.on_event(41, event, info)
        return 41

    async def tcp_info(self, cid: int) -> dict:
        for event, info in self.during:
            self.w.on_event(cid, event, info)
        return {"state": self.state, "path": ["tcpip", "im0", "nic0"], "local": "127.0.0.1:5"}


def _open(before: list, during: list, state: str) -> tuple[Worker, Conn]:
    w = _worker()
    rpc = Rpc(_Daemon(w, before, during, state), 1)  # type: ignore[arg-type]
    conn = asyncio.run(w.open(rpc, 0, 0))
    assert conn is not None
    return w, conn


def test_an_offloaded_answer_older_than_an_upload_is_not_believed() -> None:
    """tcp.info said offloaded, but the NIC's UPLOAD_ALL was handled while its answer waited:
    the connection is in host mode, waits for its re-offload, and was never refused."""
    w, conn = _open([], UPLOAD_ALL, "offloaded")
    assert conn.state == "host" and conn.needs_offload
    (rec,) = w.obs["upload_all"]
    assert rec["reoffloaded_t"] is None
    assert w.obs["refusals"] == []


def test_an_upload_before_tcp_info_then_offloaded_is_a_reoffload() -> None:
    """The UPLOAD_ALL came before the connect's answer reached the task, and tcp.info says
    offloaded: the host offloaded it again (RESUME), so the upload has its re-offload."""
    w, conn = _open(UPLOAD_ALL, [], "offloaded")
    assert conn.state == "offloaded" and not conn.needs_offload
    (rec,) = w.obs["upload_all"]
    assert rec["reoffloaded_t"] is not None
    assert w.obs["refusals"] == []


def test_an_upload_before_tcp_info_in_host_mode_is_not_a_refusal() -> None:
    w, conn = _open(UPLOAD_ALL, [], "host")
    assert conn.state == "host" and conn.needs_offload
    assert w.obs["refusals"] == [] and w.c["offload_refused_at_connect"] == 0


def test_a_connect_in_host_mode_with_no_upload_is_a_refusal() -> None:
    w, conn = _open([], [], "host")
    assert conn.needs_offload and w.c["offload_refused_at_connect"] == 1
    (ep,) = w.obs["refusals"]
    assert ep["at"] == "connect" and ep["t_last_sent"] <= ep["t_last"]
    w, conn = _open([], [], "offloaded")
    assert conn.state == "offloaded" and w.obs["refusals"] == []


def test_a_reset_heard_around_tcp_info_keeps_the_connection_aborted() -> None:
    for before, during in (([("TcpIndicateAbort", {})], []), ([], [("TcpIndicateAbort", {})])):
        w, conn = _open(before, during, "offloaded")
        assert conn.aborted and conn.state == "aborted", (before, during)
        assert w.obs["refusals"] == []


# -- INTERNAL answers: a layer raised (raise_next, spec §6.3) -------------------------------------
def _internal(layer: str, handler: str) -> InternalError:
    return InternalError(10, f"INTERNAL: {layer} failed in {handler} (PlantedBug); see the log")


class _Echoing:
    """Stands in for the RPC client: `tcp.recv` answers from a script (bytes, or an error to
    raise), `tcp.send` raises what it is given."""

    def __init__(self, script: list[bytes | Exception], send_error: Exception | None = None):
        self.script = script
        self.send_error = send_error

    async def tcp_recv(self, cid: int, n: int, timeout_ms: int) -> bytes:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def tcp_send(self, cid: int, data: bytes) -> int:
        assert self.send_error is not None
        raise self.send_error


async def test_a_read_a_receive_bug_answered_is_asked_again_and_verified() -> None:
    """Its bytes are the next read's: the slot goes on, and the hit owes data after it."""
    w = _worker()
    conn = _conn(w)
    data = conn.stream.read(3000)
    bug = _internal("im0", "MiniportTcpOffloadReceive")
    client = _Echoing([data[:1000], bug, data[1000:]])
    await w.read_back(Rpc(client, 1), conn, 3000)  # type: ignore[arg-type]
    (rec,) = conn.bugs
    assert (rec["request"], rec["layer"], rec["call"], rec["error"]) == (
        "recv", "im0", "MiniportTcpOffloadReceive", "PlantedBug"
    )  # fmt: skip
    assert not rec["holed"] and not conn.holed and not conn.lost
    assert conn.verified == 3000 and w.c["integrity_errors"] == 0
    assert w.c["internal_answers"] == 1 and w.obs["bug_answers"] == [rec]
    # the hit owed bytes verified after it: those of the read asked again
    assert rec["verify_from"] == 1000 and outcome_done(rec)


async def test_a_send_answered_internal_ends_the_slot_once_what_came_back_is_verified() -> None:
    """How much of it went out is unknown: what does come back is verified, the rest excused,
    and the slot closes (to reopen) once nothing more came for a while."""
    w = _worker()
    conn = _conn(w)
    conn.sent = conn.verified = 500  # an earlier round trip, all back
    data = conn.stream.read(4000)
    bug = _internal("nic0", "MiniportTcpOffloadSend")
    rpc = Rpc(_Echoing([bug, data[:1500], RpcTimeout(7, "TIMEOUT: nothing")], bug), 1)
    with pytest.raises(SlotBroken):
        await w.send_all(rpc, conn, data)  # type: ignore[arg-type]
    assert conn.holed and conn.lost and conn.sent == 500
    with pytest.raises(SlotBroken):
        await w.read_back(rpc, conn, 4000)  # type: ignore[arg-type]
    assert conn.verified == 2000 and w.c["integrity_errors"] == 0
    assert [r["request"] for r in conn.bugs] == ["send", "recv"]
    assert all(r["holed"] for r in conn.bugs)
    w.judge_loss(conn, aborted=False)
    assert w.c["unverified_on_close"] == 0  # the rest of that send is the bug's


async def test_bytes_that_come_back_wrong_after_a_bug_are_still_integrity_errors() -> None:
    w = _worker()
    conn = _conn(w)
    data = bytearray(conn.stream.read(2000))
    data[100] ^= 0xFF
    bug = _internal("nic0", "MiniportTcpOffloadSend")
    rpc = Rpc(_Echoing([bytes(data[:1500]), RpcTimeout(7, "TIMEOUT: nothing")], bug), 1)
    with pytest.raises(SlotBroken):
        await w.send_all(rpc, conn, bytes(data))  # type: ignore[arg-type]
    with pytest.raises(SlotBroken):
        await w.read_back(rpc, conn, 2000)  # type: ignore[arg-type]
    assert w.c["integrity_errors"] == 1


class _Offloading:
    """Stands in for the RPC client: `tcp.offload` raises what it is given, then succeeds."""

    def __init__(self, error: Exception) -> None:
        self.errors = [error]

    async def tcp_offload(self, cid: int) -> dict:
        if self.errors:
            raise self.errors.pop()
        return {"state": "offloaded", "path": ["tcpip", "im0", "nic0"]}


async def test_an_offload_an_initiates_bug_answered_keeps_the_stream_and_owes_an_offload() -> None:
    """The initiate failed as a refused one (spec §6.3): nothing was lost, so the slot goes
    on in host mode; the hit owes an offload again and bytes verified after it."""
    w = _worker()
    conn = _conn(w, state="host")
    conn.needs_offload = True
    rpc = Rpc(_Offloading(_internal("im0", "MiniportInitiateOffload")), 1)
    await w.reoffload(rpc, conn)  # type: ignore[arg-type]
    (rec,) = conn.bugs
    assert (rec["request"], rec["call"]) == ("reoffload", "MiniportInitiateOffload")
    assert not conn.holed and not conn.lost and conn.needs_offload and conn.state == "host"
    assert rec["verify_from"] is None and not outcome_done(rec)
    conn.next_offload_try = 0.0
    await w.reoffload(rpc, conn)  # type: ignore[arg-type]
    assert conn.state == "offloaded" and not conn.needs_offload
    assert rec["reoffloaded_t"] is not None and not outcome_done(rec)
    w.verify(conn, conn.stream.read(100))
    assert outcome_done(rec)


class _Closing:
    """Stands in for the RPC client at a close: `tcp.close` answers from a script."""

    def __init__(self, script: list[Exception | None]) -> None:
        self.script = script
        self.closes = 0

    async def tcp_disconnect(self, cid: int, abortive: bool) -> str:
        return "NDIS_STATUS_SUCCESS"

    async def tcp_recv(self, cid: int, n: int, timeout_ms: int) -> bytes:
        return b""

    async def tcp_info(self, cid: int) -> dict:
        return {"state": "offloaded"}

    async def tcp_close(self, cid: int) -> None:
        self.closes += 1
        step = self.script.pop(0)
        if step is not None:
            raise step


async def test_a_close_a_terminates_bug_answered_is_a_hit_and_asked_again() -> None:
    """The terminate the close began raised: the close is answered INTERNAL, the hit recorded
    for the judge, and the close asked again (the host's next terminate finishes it)."""
    w = _worker()
    conn = _conn(w)
    client = _Closing([_internal("nic0", "MiniportTerminateOffload"), None])
    await w.close_conn(Rpc(client, 1), conn, final=True)  # type: ignore[arg-type]
    (rec,) = conn.bugs
    assert (rec["request"], rec["call"]) == ("close", "MiniportTerminateOffload")
    assert client.closes == 2 and w.c["closed"] == 1 and not w.errors
    assert 7 not in w.by_id


@pytest.mark.parametrize("later", ["TimeoutExpiration", "UploadRequested"])
def test_a_request_after_upload_all_leaves_the_upload_the_target_failures(later: str) -> None:
    """A NIC that fails asks every connection up (NDIS_STATUS_UPLOAD_ALL); the kernel's timeout
    or the FIN_WAIT_2 timer may add a request of their own before the host's terminate. The
    upload is still the target failure's: counted as a NIC upload, not an unrequested
    retrieve."""
    w = _worker()
    conn = _conn(w)
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": "NDIS_STATUS_UPLOAD_ALL"})
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": later, "mandatory": True})
    w.apply_event(conn, "uploaded", {})
    assert w.c["nic_uploads"] == 1 and len(w.obs["upload_all"]) == 1
    assert w.c["retrieve_uploads"] == 0 and w.obs["unrequested"] == []
    assert conn.host_cause == "target_failure"


def test_the_time_wait_request_of_our_own_close_is_no_retrieve_faults_event() -> None:
    """An offloaded connection entering TIME_WAIT is asked up by its target (spec §5.2): on a
    connection the soak is closing, that request is its own close's, not a `retrieve` fault's
    aimed at it earlier (a daemon whose retrieve fault did nothing must fail the soak for
    that, "no TcpIndicateRetrieve")."""
    w = _worker()
    conn = _conn(w)
    rec = {"kind": "retrieve", "injected": True, "conn": conn.cid}
    conn.faults.append(rec)
    watch(conn, rec, None)
    conn.own_upload = True
    w.move(conn, "closing")
    w.apply_event(conn, "TcpIndicateRetrieve", {"reason": "UploadRequested", "mandatory": True})
    w.apply_event(conn, "uploaded", {})
    assert not rec.get("event_seen") and not rec.get("uploaded"), rec
    assert w.c["retrieve_uploads"] == 0 and w.obs["unrequested"] == []
