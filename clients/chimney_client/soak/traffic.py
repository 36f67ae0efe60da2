"""A worker's traffic on one connection: open, echo round trips verified in order, planned
uploads and re-offloads, and the close."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

from ..errors import (
    ChimneyError,
    InternalError,
    InvalidState,
    LimitError,
    NdisStatusError,
    RpcError,
    RpcTimeout,
)
from .conn import Conn, SlotBroken, watch
from .limits import (
    BUG_QUIET_MS,
    DETAILS_KEPT,
    MAX_BUG_ANSWERS,
    MAX_SEND_FAILURES,
    OP_TIMEOUT_S,
    RECV_CHUNK,
    RECV_TIMEOUT_MS,
    REOFFLOAD_RETRY_S,
)
from .probe_faults import NO_ENTRIES
from .state import Rpc, WorkerState, owes_reoffload

#: What an INTERNAL answer says of the layer that raised: "nic0 failed in
#: MiniportTcpOffloadSend (PlantedBug); see the daemon's log" (the daemon's `_layer_failed`).
_FAILED_IN = re.compile(r"(\S+) failed in (\w+) \((\w+)\)")
RECEIVE_HANDLER = "MiniportTcpOffloadReceive"
INITIATE_HANDLER = "MiniportInitiateOffload"
#: What the host answers an offload to a NIC a host event withholds (docs/faults.md
#: `host_event`, spec §6.2): "INVALID_STATE: the host withholds offloads to nic0: power_down;
#: nic1: media_disconnect, power_down (spec §6.2)" (chimneyd's host_reasons.refusal).
_WITHHOLDS = re.compile(r"^the host withholds offloads to (.+) \(spec §6\.2\)$")
#: The host's own reasons a `host_event` names (docs/faults.md `host_event`).
HOST_EVENTS = frozenset(
    {"power_down", "media_disconnect", "capability_disabled", "net_event_pause"}
)


#: The host's no-room answer (docs/rpc.md `tcp.info`: "im0 advertises room for 8 connections"):
#: it names the layer below it, one of its bindings, whose advertised room it used up (spec §8).
HOST_NO_ROOM = re.compile(r"(\S+) advertises room for \d+ connections")


def refused_by(info: dict[str, Any]) -> str | None:
    """The layer whose room refused the connection's last offload, as tcp.info's
    `offload_refused` (docs/rpc.md) says: its `layer`, but for the host's refusal for no room
    the binding below it that its answer names (the host is on every connection's way; that
    binding is not). None where it names none (or the daemon has no such field)."""
    said = info.get("offload_refused")
    if not isinstance(said, dict):
        return None
    binding = HOST_NO_ROOM.search(str(said.get("reason") or ""))
    layer = binding.group(1) if binding is not None else said.get("layer")
    return None if layer is None else str(layer)


def withheld_by(exc: RpcError) -> dict[str, list[str]] | None:
    """The NICs and host events an INVALID_STATE answer to an offload names, if it is the
    host's refusal for host events (spec §6.2); None for any other answer, which stays an
    error. Strict: every NIC must name events, each one a host event."""
    m = _WITHHOLDS.match(exc.detail) if isinstance(exc, InvalidState) else None
    if m is None:
        return None
    withheld: dict[str, list[str]] = {}
    for part in m.group(1).split("; "):
        nic, sep, events = part.partition(": ")
        names = events.split(", ")
        if not sep or not nic or not set(names) <= HOST_EVENTS:
            return None
        withheld[nic] = names
    return withheld


def local_port(info: dict[str, Any]) -> int:
    """The port of `tcp.info`'s `local` ("127.0.0.1:58976", "[::1]:58976"), 0 if unknown."""
    _, _, port = str(info.get("local", "")).rpartition(":")
    return int(port) if port.isdigit() else 0


class Traffic(WorkerState):
    def bug_answer(self, conn: Conn, request: str, exc: InternalError) -> None:
        """`request` on `conn` was answered INTERNAL: a layer raised while it handled the
        connection (spec §6.3). Recorded for the judge, which explains it by a raise_next or
        fails the run. An offload an initiate's bug answered failed as a refused one: the
        stream is whole, and the connection owes an offload again and data after it. A read a
        bug in a receive handler answered took nothing: its bytes go to the next read, and the
        connection must go on carrying verified data. A send answered INTERNAL, or anything a
        bug elsewhere answered, leaves the stream's fate unknown (a send's bug leaves a hole; a
        send a receive's bug answered goes on, but another bug may still fail it with nobody
        waiting to hear; a terminate's resets the connection): what comes back is still
        verified, then the slot closes and reopens, and the reopened slot must carry verified
        data."""
        m = _FAILED_IN.search(str(exc))
        layer, handler, error = m.groups() if m else ("?", "?", "?")
        rec: dict[str, Any] = {
            "conn": conn.cid,
            "t": time.monotonic(),
            "request": request,
            "layer": layer,
            "call": handler,
            "error": error,
            "message": str(exc)[:200],
        }
        self.c["internal_answers"] += 1
        self.obs["bug_answers"].append(rec)
        conn.bugs.append(rec)
        if handler == INITIATE_HANDLER and request in ("offload", "reoffload"):
            # the initiate failed as a refused one (spec §6.3): the connection carries on in
            # host mode with its stream whole, and owes an offload again and data after it
            conn.needs_offload = True
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            watch(conn, rec, None)
            owes_reoffload(rec)
        elif handler == RECEIVE_HANDLER and request != "send" and not conn.holed:
            watch(conn, rec, conn.verified)
        else:
            conn.holed = True
            conn.lost = True  # what its last send left unechoed is the bug's, not a loss
        rec["holed"] = conn.holed
        if len(conn.bugs) == MAX_BUG_ANSWERS + 1:
            self.error("internal", f"{len(conn.bugs)} INTERNAL answers: {exc}", conn=conn.cid)
            conn.holed = conn.lost = True  # a layer that keeps raising: give the slot up

    async def open(self, rpc: Rpc, slot: int, peer: int) -> Conn | None:
        host, port = self.cfg.peers[peer]
        for attempt in range(3):
            try:
                async with rpc.sem:
                    sent = time.monotonic()
                    cid = await rpc.client.tcp_connect(host, port)
            except LimitError as exc:
                self.c["limit_refusals"] += 1
                # a slot that had its connection and asks for another (after churn, a reset,
                # a bug) is still held: the verdict says which was refused
                reopen = slot in self.slots_opened
                self.c["limit_refusals_at_reopen"] += int(reopen)
                self.error("limit", str(exc), slot=slot, reopen=reopen)
                return None
            except RpcError as exc:
                if attempt == 2:
                    self.c["connect_failures"] += 1
                    self.error("connect", str(exc), slot=slot, peer=f"{host}:{port}")
                    return None
                await asyncio.sleep(0.5)
                continue
            conn = Conn(cid, self.new_seed(slot), slot, peer, time.monotonic())
            self.by_id[cid] = conn
            self.rpc_by_cid[cid] = rpc
            # Events handled before we knew the id (a notification is handled as it arrives,
            # the connect's answer when this task runs): they came before the tcp.info below.
            for event, einfo in self.early.pop(cid, ()):
                self.apply_event(conn, event, einfo)
            # The "offloaded" event of the offload done inside tcp.connect comes before the
            # daemon records us as the owner, so it is not delivered: ask for the state.
            uploads = conn.uploads
            try:
                async with rpc.sem:
                    info = await rpc.client.tcp_info(cid)
            except RpcError as exc:
                info = {}
                self.error("info", str(exc), conn=cid)
            conn.local_port = local_port(info)
            conn.path = conn.path or list(info.get("path") or [])
            self.connect_state(
                conn, info.get("state"), conn.uploads != uploads, sent, refused_by(info)
            )
            if self.cfg.upload_share > 0 and self.rng.random() < self.cfg.upload_share:
                conn.upload_at = time.monotonic() + self.rng.uniform(0.5, 3.0) * max(
                    self.cfg.think_ms / 1000.0, 0.2
                )
            self.c["opened"] += 1
            self.slots_opened.add(slot)
            return conn
        return None

    def connect_state(
        self,
        conn: Conn,
        state: str | None,
        uploaded_meanwhile: bool,
        sent: float,
        by: str | None = None,
    ) -> None:
        """Where a new connection is, from its `tcp.info` and the events already applied.
        An upload seen while tcp.info was answered makes the answer older than the event:
        the events say where it is; so does a reset (TcpIndicateAbort) seen before or while.
        An upload seen before (it was offloaded inside tcp.connect, then uploaded) is not a
        refused offload."""
        if uploaded_meanwhile or conn.aborted:
            return  # the events decide: an upload newer than the answer, or a reset
        if state == "offloaded":
            if conn.needs_offload:  # uploaded before tcp.info, and the host offloaded it again
                self.offloaded_again(conn, conn.path)
            else:
                conn.state = "offloaded"  # since tcp.connect returned: it offloads inside
        elif not conn.uploads:
            self.c["offload_refused_at_connect"] += 1
            conn.needs_offload = True
            self.refused(conn, "connect", None, sent, by)

    def withheld(self, conn: Conn, at: str, exc: RpcError, sent: float) -> bool:
        """`exc` answered an offload of `conn`: if it is the host refusing for a host event
        (INVALID_STATE naming it, docs/faults.md `host_event`), a refusal — the connection stays
        in the host stack and is offloaded again after the clear — with the NICs and events it
        names, which the judge holds to a host_event on that NIC (probe_faults); True then."""
        withheld = withheld_by(exc)
        if withheld is None:
            return False
        self.c["reoffload_refused"] += at == "reoffload"
        self.refused(conn, at, InvalidState.symbol, sent)
        assert conn.refusal is not None
        named: dict[str, list[str]] = conn.refusal.setdefault("withheld", {})
        for nic, events in withheld.items():
            named[nic] = sorted({*named.get(nic, []), *events})
        return True

    async def reoffload(self, rpc: Rpc, conn: Conn) -> None:
        uploads = conn.uploads
        try:
            async with rpc.sem:
                sent = time.monotonic()
                result = await rpc.client.tcp_offload(conn.cid)
        except NdisStatusError as exc:
            # e.g. PAUSE while the NIC is down: stay in host mode and try again later
            self.c["reoffload_refused"] += 1
            ep = self.refused(conn, "reoffload", exc.status, sent)
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            await self.note_refused_by(rpc, conn, ep, exc.status)
            return
        except RpcError as exc:
            if conn.aborted:
                raise SlotBroken("aborted") from None
            if isinstance(exc, InternalError):
                self.bug_answer(conn, "reoffload", exc)
            elif not self.withheld(conn, "reoffload", exc, sent):
                self.error("reoffload", str(exc), conn=conn.cid)
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            return
        if self.offload_answered(conn, uploads, result):
            self.c["reoffloads"] += 1

    async def note_refused_by(
        self, rpc: Rpc, conn: Conn, ep: dict[str, Any] | None, status: str | None
    ) -> None:
        """A refusal episode `ep` just begun with no room (NO_ENTRIES): keep the layer that
        refused it (tcp.info's `offload_refused`), which says whose room it was. One read per
        episode, none for other statuses; a daemon that says nothing leaves it unknown."""
        if ep is None or status not in NO_ENTRIES:
            return
        try:
            async with rpc.sem:
                info = await rpc.client.tcp_info(conn.cid)
        except RpcError:
            return  # (a reset or a closed RPC connection shows in the next round trip)
        by = refused_by(info)
        if by is not None:
            ep["refused_by"] = by

    async def think(self, conn: Conn, seconds: float) -> None:
        """The pause between two round trips; `wake` cuts it short."""
        loop = asyncio.get_running_loop()
        nap: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, nap)
        conn.nap = nap
        try:
            await nap
        finally:
            timer.cancel()
            conn.nap = None

    def drop_stall_order(self, conn: Conn) -> None:
        """`conn` closes: a stall or a reset it was to inject goes to another connection."""
        if conn.stall_order is not None:
            fut = conn.stall_order[2]
            conn.stall_order = None
            if not fut.done():
                fut.set_exception(LookupError("closed before its stall"))
        if conn.reset_order is not None:
            fut = conn.reset_order[2]
            conn.reset_order = None
            if not fut.done():
                fut.set_exception(LookupError("closed before its reset"))

    async def echo(self, rpc: Rpc, conn: Conn) -> None:
        """One round trip: send a payload, read it all back, verify it in order. A planned upload
        happens between the send and the reads (bytes in flight cross the upload), then the
        connection is offloaded again."""
        now = time.monotonic()
        for rec in conn.watch:
            # a stall is over: data verified from here on shows the connection came back
            end = rec.get("stall_end")
            if end is not None and rec.get("verify_from") is None and now >= end:
                rec["verify_from"] = conn.verified
        # the round trip right after a stall was injected: it cannot come back before the
        # stall's end (the daemon reads nothing from the socket until then)
        probes = [r for r in conn.faults if r.get("probe") == "next"]
        for rec in probes:
            rec["probe"], rec["trip_t0"] = "sent", now
        size = self.cfg.payload.sample(self.rng)
        data = conn.stream.read(size)
        upload = conn.upload_at is not None and now >= conn.upload_at and conn.offloaded
        async with rpc.sem:
            conn.busy = True
            try:
                reader = asyncio.create_task(self.read_back(rpc, conn, size))
                try:
                    await self.send_all(rpc, conn, data)
                    if upload:
                        conn.upload_at = None
                        await self.planned_upload(rpc, conn)
                finally:
                    # never cancel a read: the daemon would still hand it the next bytes
                    await asyncio.wait([reader])
                    if not reader.cancelled():
                        reader.exception()  # taken even when the send's own error wins
                reader.result()
                for rec in probes:
                    rec["probe"], rec["trip_t1"] = "back", time.monotonic()
                if upload and not conn.needs_offload:
                    await self.planned_offload(rpc, conn)
                self.c["ops"] += 1
            finally:
                conn.busy = False

    async def send_all(self, rpc: Rpc, conn: Conn, data: bytes) -> None:
        off, failures = 0, 0
        view = memoryview(data)
        failed: dict[str, Any] | None = None
        while off < len(data):
            t0 = time.perf_counter()
            conn.sending = True
            try:
                acked = await rpc.client.tcp_send(conn.cid, view[off:] if off else data)
            except NdisStatusError as exc:
                got = exc.acknowledged or 0
                off += got
                conn.sent += got
                self.c["bytes_sent"] += got
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                failures += 1
                self.c["send_failures"] += 1
                failed = {
                    "conn": conn.cid,
                    "t": time.monotonic(),
                    "status": exc.status,
                    "offset": conn.sent,
                    "resent": False,
                    "_conn": conn,
                }
                self.obs["send_failures"].append(failed)
                if failures >= MAX_SEND_FAILURES:
                    self.error("send", f"{failures} failed sends in a row: {exc}", conn=conn.cid)
                    conn.lost = True
                    raise SlotBroken("send failures") from None
                await asyncio.sleep(0.01 * failures)
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                self.c["send_resends"] += 1
                continue
            except InternalError as exc:
                self.bug_answer(conn, "send", exc)  # how much of it went out is unknown
                raise SlotBroken("layer bug") from None
            except RpcError as exc:
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                self.error("send", str(exc), conn=conn.cid, offset=conn.sent)
                raise SlotBroken("send error") from None
            finally:
                conn.sending = False
            self.latency((time.perf_counter() - t0) * 1000.0, conn.cid)
            off += acked
            conn.sent += acked
            self.c["bytes_sent"] += acked
            if failed is not None:
                # the resend went through: the failed bytes must now come back intact
                failed["resent"] = True
                watch(conn, failed, failed["offset"])
                failed = None

    async def read_back(self, rpc: Rpc, conn: Conn, size: int) -> None:
        got = 0
        t0 = time.monotonic()
        while got < size:
            try:
                chunk = await rpc.client.tcp_recv(
                    conn.cid,
                    min(size - got, RECV_CHUNK),
                    BUG_QUIET_MS if conn.holed else RECV_TIMEOUT_MS,
                )
            except RpcTimeout:
                self.c["recv_timeouts"] += 1
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                if conn.holed:
                    raise SlotBroken("layer bug") from None  # the rest fell into the hole
                if time.monotonic() - t0 > OP_TIMEOUT_S:
                    self.c["stuck_ops"] += 1
                    conn.lost = True
                    self.error(
                        "stuck",
                        f"{got} of {size} bytes back after {OP_TIMEOUT_S:g} s",
                        conn=conn.cid,
                        offset=conn.verifier.offset,
                    )
                    raise SlotBroken("stuck") from None
                continue
            except NdisStatusError as exc:
                if conn.aborted or exc.status == "NDIS_STATUS_REQUEST_ABORTED":
                    conn.aborted = True
                    raise SlotBroken("aborted") from None
                self.error("recv", str(exc), conn=conn.cid, offset=conn.verifier.offset)
                raise SlotBroken("recv error") from None
            except InternalError as exc:
                # a read a bug answered took nothing: its bytes are the next read's (§6.3)
                self.bug_answer(conn, "recv", exc)
                if len(conn.bugs) > MAX_BUG_ANSWERS:
                    raise SlotBroken("layer bug") from None
                continue
            except RpcError as exc:
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                self.error("recv", str(exc), conn=conn.cid, offset=conn.verifier.offset)
                raise SlotBroken("recv error") from None
            if not chunk:
                if conn.aborted:
                    raise SlotBroken("aborted")
                self.error("eof", "unexpected end of stream", conn=conn.cid, offset=got)
                raise SlotBroken("eof")
            self.verify(conn, chunk)
            got += len(chunk)

    def verify(self, conn: Conn, chunk: bytes) -> None:
        at = conn.verifier.offset
        bad = conn.verifier.check(chunk)
        n = len(chunk)
        conn.verified += n
        self.c["bytes_verified"] += n
        if bad is not None:
            self.c["integrity_errors"] += 1
            conn.integrity_errors += 1
            if len(self.integrity) < DETAILS_KEPT:
                self.integrity.append(
                    {
                        "conn": conn.cid,
                        "seed": conn.seed,
                        "offset": bad,
                        "chunk_offset": at,
                        "chunk_len": n,
                        "worker": self.cfg.index,
                        "state": conn.state,
                    }
                )

    async def planned_upload(self, rpc: Rpc, conn: Conn) -> None:
        conn.own_upload = True
        if conn.state == "offloaded":  # (a target failure may have uploaded it meanwhile)
            self.move(conn, "uploading")
        try:
            await rpc.client.tcp_upload(conn.cid)
            self.c["uploads_planned"] += 1
        except InternalError as exc:
            self.bug_answer(conn, "upload", exc)
        except RpcError as exc:
            if conn.aborted:
                raise SlotBroken("aborted") from None
            self.error("upload", str(exc), conn=conn.cid)
        finally:
            conn.own_upload = False
            if conn.state == "uploading":
                self.move(conn, "host", "planned_upload")

    async def planned_offload(self, rpc: Rpc, conn: Conn) -> None:
        uploads = conn.uploads
        sent = time.monotonic()
        try:
            result = await rpc.client.tcp_offload(conn.cid)
        except NdisStatusError as exc:
            conn.needs_offload = True  # e.g. the NIC is paused: try later
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            ep = self.refused(conn, "planned_offload", exc.status, sent)
            await self.note_refused_by(rpc, conn, ep, exc.status)
            return
        except RpcError as exc:
            if conn.aborted:
                raise SlotBroken("aborted") from None
            conn.needs_offload = True
            if isinstance(exc, InternalError):
                self.bug_answer(conn, "offload", exc)
            elif self.withheld(conn, "planned_offload", exc, sent):
                conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            else:
                self.error("offload", str(exc), conn=conn.cid)
            return
        if self.offload_answered(conn, uploads, result):
            self.c["reoffloads_planned"] += 1

    async def drain_to_eof(self, rpc: Rpc, conn: Conn) -> None:
        """After our FIN the echo peer returns its FIN: read to end of stream (bounded)."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                chunk = await rpc.client.tcp_recv(conn.cid, RECV_CHUNK, 2000)
            except RpcTimeout:
                continue
            except InternalError as exc:
                self.bug_answer(conn, "recv", exc)  # its bytes are the next read's (§6.3)
                if len(conn.bugs) > MAX_BUG_ANSWERS:
                    return
                continue
            except RpcError:
                return
            if not chunk:
                return
            self.verify(conn, chunk)
        self.error("fin", "no FIN from the echo peer within 10 s", conn=conn.cid)

    async def drain_after_abort(self, rpc: Rpc, conn: Conn) -> None:
        """An aborted connection may still hold bytes that came in before the RST (handed back
        to the host when it terminated the offload): read them until the daemon says reset."""
        for _ in range(64):
            try:
                chunk = await rpc.client.tcp_recv(conn.cid, RECV_CHUNK, 200)
            except ChimneyError:
                return
            if not chunk:
                return
            self.verify(conn, chunk)

    async def read_before_own_reset(self, rpc: Rpc, conn: Conn) -> None:
        """A daemon_reset: the daemon reset its own socket, so what it had read from it before
        (tcp.info `bytes_received`, which stops there) must all come back; only what was still
        in the socket goes with it. The echo peer's own RST says the same through its counts."""
        for rec in conn.faults:
            if rec["kind"] != "daemon_reset" or rec.get("delivered") is not None:
                continue
            try:
                info = await rpc.client.tcp_info(conn.cid)
            except ChimneyError as exc:
                self.error("info", f"after its reset: {exc}", conn=conn.cid)
                return
            if isinstance(info.get("bytes_received"), int):
                rec["delivered"] = info["bytes_received"]

    async def state_agrees(self, rpc: Rpc, conn: Conn) -> None:
        """Before a final close, compare our idea of the connection's state with tcp.info (asked
        again briefly while they differ: an event may still be on its way)."""
        daemon_state = None
        for _ in range(5):
            try:
                info = await rpc.client.tcp_info(conn.cid)
            except ChimneyError:
                return
            daemon_state = info.get("state")
            if daemon_state == conn.state or conn.aborted:
                return
            await asyncio.sleep(0.05)
        self.c["state_disagreements"] += 1
        self.obs["disagreements"].append(
            {"conn": conn.cid, "soak": conn.state, "daemon": daemon_state}
        )

    async def close_conn(self, rpc: Rpc, conn: Conn, final: bool) -> None:
        self.drop_stall_order(conn)
        aborted = conn.aborted  # an abort during our own close below is ours, not a fault's
        if not aborted and not self.fast_stop:
            if final and conn.state in ("offloaded", "host"):
                await self.state_agrees(rpc, conn)
            if conn.state == "host" and not conn.holed:  # a holed one: the bug's upload
                self.c["host_at_close"] += 1
                self.obs["host_at_close"].append(
                    {"conn": conn.cid, "t": time.monotonic(), "cause": conn.host_cause}
                )
        if conn.state != "aborted":
            self.move(conn, "closing")
        conn.own_upload = True  # tcp.close uploads first: that upload is ours
        mode = self.cfg.close
        abortive = mode == "abortive" or (mode == "mixed" and conn.seed % 2 == 1)
        async with rpc.sem:
            if aborted:
                await self.drain_after_abort(rpc, conn)
                await self.read_before_own_reset(rpc, conn)
            elif not self.fast_stop:
                try:
                    status = await rpc.client.tcp_disconnect(conn.cid, abortive)
                    if status != "NDIS_STATUS_SUCCESS" and not conn.aborted:
                        self.error("disconnect", status, conn=conn.cid, abortive=abortive)
                    if not abortive:
                        await self.drain_to_eof(rpc, conn)
                except InternalError as exc:
                    self.bug_answer(conn, "disconnect", exc)
                except RpcError as exc:
                    if not conn.aborted:
                        self.error("disconnect", str(exc), conn=conn.cid, abortive=abortive)
            self.judge_loss(conn, aborted)
            try:
                await rpc.client.tcp_close(conn.cid)
                self.c["closed"] += 1
            except InternalError as exc:
                # a layer raised on the terminate the close began (spec §6.3): the host's
                # next terminate, after the abort, finishes the connection; ask again
                self.bug_answer(conn, "close", exc)
                with contextlib.suppress(ChimneyError):
                    await rpc.client.tcp_close(conn.cid)
                self.c["closed"] += 1
            except ChimneyError as exc:
                self.error("close", str(exc), conn=conn.cid)
        self.by_id.pop(conn.cid, None)
        self.rpc_by_cid.pop(conn.cid, None)

    def judge_loss(self, conn: Conn, aborted: bool) -> None:
        """Bytes acknowledged but never echoed back. A reset excuses only what it cut off: the
        bytes past what the echo peer had delivered back to the daemon when its RST went out, or
        past what the daemon had read from its socket when it reset that itself."""
        unverified = conn.sent - conn.verified
        if aborted:
            resets = [r for r in conn.faults if r["kind"] in ("peer_reset", "daemon_reset")]
            if not conn.expect_abort or not resets:
                # judged with the faults: only a layer's bug may explain it (obs "aborts")
                self.c["unexpected_aborts"] += 1
                if conn.abort is not None:
                    conn.abort["unexpected"] = True
                return
            for rec in resets:
                rec["sent_at_close"], rec["verified_at_close"] = conn.sent, conn.verified
                delivered = rec.get("delivered")
                if delivered is not None and conn.verified < delivered:
                    rec["lost_before_reset"] = delivered - conn.verified
                    self.c["lost_before_reset"] += delivered - conn.verified
                    before = (
                        "the peer echoed before its RST"
                        if rec["kind"] == "peer_reset"
                        else "the daemon had read before its own RST"
                    )
                    self.error(
                        "lost_before_reset",
                        f"{delivered - conn.verified} byte(s) {before} never came back",
                        conn=conn.cid,
                        offset=conn.verified,
                    )
            return
        if self.fast_stop:
            return  # interrupted: round trips were cut short on purpose
        if unverified and not conn.lost:
            self.c["unverified_on_close"] += unverified
            self.error(
                "unverified",
                f"{unverified} byte(s) sent, never echoed",
                conn=conn.cid,
                offset=conn.verified,
            )
        with contextlib.suppress(KeyError):
            del self.early[conn.cid]


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)
