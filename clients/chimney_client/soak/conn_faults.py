"""Connection faults, injected by the worker that owns the connection (faults on a connection
are owner-only): the echo peer's reset, the daemon's own reset, stalls and retrieves. Each
record says what the fault must lead to; `conn.watch` holds it until data is verified after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import ChimneyError, InvalidState, NotFound
from .conn import Conn, finish, watch
from .faults import FAULT_KINDS
from .limits import DEFAULT_STALL_MS, FAULT_AIM_WAIT_S, RESET_HOLD_WAIT_S
from .peer_control import PeerControl
from .state import Rpc
from .traffic import Traffic


class ConnFaults(Traffic):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.controls: dict[int, PeerControl] = {}

    def candidates(self, kind: str) -> list[Conn]:
        """Live connections a fault may hit: no fault on them yet, no outcome pending, not about
        to close; offloaded ones, except that resets and stalls also mean something in host
        mode (a retrieve does not: only an offloaded connection can be retrieved)."""
        live = [
            c
            for c in self.by_id.values()
            if not c.aborted and not c.churn and not c.faults and not c.wants_more()
        ]
        if kind == "peer_reset":
            live = [c for c in live if c.local_port and self.cfg.peer_controls[c.peer]]
        offloaded = [c for c in live if c.offloaded]
        return offloaded or ([] if kind == "retrieve" else live)

    def why_none(self) -> str:
        """Why no connection could be aimed at: how many are open, and what rules them out."""
        conns = list(self.by_id.values())
        owe = sum(1 for c in conns if c.wants_more())
        hit = sum(1 for c in conns if c.faults)
        gone = sum(1 for c in conns if c.aborted or c.churn)
        return f"{len(conns)} open: {owe} owe an outcome, {hit} carry a fault, {gone} ending"

    async def conn_fault(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        rec: dict[str, Any] = {"tag": msg["tag"], "kind": kind, "injected": False}
        self.fault_records.append(rec)
        deadline = time.monotonic() + FAULT_AIM_WAIT_S
        tried: set[int] = set()
        while not rec["injected"]:
            candidates = [c for c in self.candidates(kind) if c.cid not in tried]
            if not candidates:
                if time.monotonic() > deadline or self.stopping:
                    rec["error"] = (
                        f"no live connection to aim at within {FAULT_AIM_WAIT_S:g} s "
                        f"({self.why_none()})"
                    )
                    return
                await asyncio.sleep(0.1)
                continue
            conn = self.rng.choice(candidates)
            tried.add(conn.cid)
            rec.update(conn=conn.cid, t0=time.monotonic(), state_at_injection=conn.state)
            rec["_conn"] = conn
            conn.faults.append(rec)
            if kind in ("stall_peer", "retrieve"):
                # watched before the injection: its events may overtake the fault's answer
                watch(conn, rec, None)
            try:
                if kind in ("peer_reset", "daemon_reset"):
                    await self.reset_through_slot(conn, rec, msg["params"])
                elif kind == "stall_peer":
                    await self.stall_through_slot(conn, rec, msg["params"])
                else:
                    await self.daemon_fault(conn, rec, msg["params"])
                rec["injected"] = True
            except (InvalidState, NotFound, LookupError) as exc:
                # it moved on between our choice and the injection (uploading, closing): aim at
                # another one; what the daemon said is kept
                self.unaim(conn, rec)
                rec["missed"] = rec.get("missed", 0) + 1
                rec["last_miss"] = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    rec["error"] = f"every connection aimed at moved on: {rec['last_miss']}"
                    return
            except (ChimneyError, OSError, TimeoutError) as exc:
                self.unaim(conn, rec)
                rec["error"] = f"{type(exc).__name__}: {exc}"
                return
        if kind == "retrieve":
            rec.setdefault("event_seen", False)
            rec.setdefault("uploaded", False)

    def unaim(self, conn: Conn, rec: dict[str, Any]) -> None:
        conn.faults = [r for r in conn.faults if r is not rec]
        conn.watch = [r for r in conn.watch if r is not rec]
        conn.expect_abort = False
        for key in ("_conn", "_vconn", "verify_from", "stall_end", "probe", "trip_t0", "trip_t1"):
            rec.pop(key, None)

    async def peer_reset(self, conn: Conn, rec: dict[str, Any]) -> None:
        """The echo peer resets the connection: the RST comes in from the wire."""
        address = self.cfg.peer_controls[conn.peer]
        assert address is not None
        control = self.controls.get(conn.peer)
        if control is None:
            control = self.controls[conn.peer] = PeerControl(*address)
        conn.expect_abort = True
        rec["port"] = conn.local_port
        counts = await control.reset(conn.local_port)
        rec["received"], rec["delivered"] = counts.get("received"), counts.get("delivered")

    async def reset_through_slot(
        self, conn: Conn, rec: dict[str, Any], params: dict[str, str]
    ) -> None:
        """Have the connection's own slot order the reset with bytes held at the daemon
        (`reset_now`). Between round trips, and nearly always during one (a read is posted),
        nothing is held there when the RST lands, and the check that what the daemon had when
        it came all comes back would have no case."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.reset_order = (rec, params, fut)
        self.wake(conn)
        try:
            await asyncio.wait_for(asyncio.shield(fut), FAULT_AIM_WAIT_S)
        except TimeoutError:
            if conn.reset_order is not None and conn.reset_order[2] is fut:
                conn.reset_order = None  # never taken: its slot is stuck in a round trip
                raise LookupError(f"its slot took no reset within {FAULT_AIM_WAIT_S:g} s") from None
            await fut  # taken by the slot: the reset is under way

    async def reset_now(self, rpc: Rpc, conn: Conn) -> None:
        """The slot's side of `reset_through_slot`: a round trip whose read waits for the reset.
        Send a payload; once the daemon has read its echo from the socket (tcp.info
        `bytes_received`, bounded), those bytes are held at the daemon, unread by us: order the
        reset then, wait for its abort, and only then read back. Every byte the daemon held
        must still come back (`judge_loss`); `held_at_reset` says how many it held.

        An offloaded connection's payload is made larger than the host's receive buffer: the
        host takes what it holds from the NIC's indication and refuses the rest, which the NIC
        then holds. Both layers hold bytes at the RST, not the host alone. Never more than the
        two hold together: what the kernel held at the RST is lost and would count as lost by
        the daemon."""
        assert conn.reset_order is not None
        rec, params, fut = conn.reset_order
        conn.reset_order = None
        size = self.cfg.payload.sample(self.rng)
        async with rpc.sem:
            conn.busy = True
            try:
                try:
                    size = max(size, await self.past_host_buffer(rpc, conn))
                    await self.send_all(rpc, conn, conn.stream.read(size))
                    read = await self.echo_read(rpc, conn)
                except BaseException:
                    if not fut.done():  # the fault goes to another connection
                        fut.set_exception(LookupError("its connection broke before the reset"))
                    raise
                if read < conn.sent:
                    # not all of the echo read (its reading paused, e.g. uploaded meanwhile):
                    # the kernel holds some, which a reset loses; another connection takes it
                    if not fut.done():
                        fut.set_exception(LookupError("the daemon did not read its whole echo"))
                    await self.read_back(rpc, conn, size)
                    self.c["ops"] += 1
                    return
                rec["held_at_reset"] = max(0, read - conn.verified)
                rec["payload_at_reset"] = size
                try:
                    if rec["kind"] == "peer_reset":
                        await self.peer_reset(conn, rec)
                    else:
                        await self.daemon_fault(conn, rec, params)
                except BaseException as exc:
                    rec.pop("held_at_reset", None)
                    if not fut.done():
                        fut.set_exception(exc)
                    # not reset: the echo is read back as any other
                else:
                    if not fut.done():
                        fut.set_result(None)
                    await self.abort_heard(conn)
                await self.read_back(rpc, conn, size)
                self.c["ops"] += 1
            finally:
                conn.busy = False

    async def past_host_buffer(self, rpc: Rpc, conn: Conn) -> int:
        """A payload a quarter past the host's receive buffer (tcp.info `delegated` RcvWnd, as
        handed down at the offload) on an offloaded connection: the NIC holds what the host
        refuses, up to as much again, so the daemon still reads all of it. 0 if unknown."""
        try:
            info = await rpc.client.tcp_info(conn.cid)
        except ChimneyError:
            return 0
        window = (info.get("delegated") or {}).get("RcvWnd")
        if info.get("state") != "offloaded" or not isinstance(window, int) or window <= 0:
            return 0
        return window + window // 4

    async def echo_read(self, rpc: Rpc, conn: Conn) -> int:
        """How many bytes the daemon has read from the connection's socket (tcp.info
        `bytes_received`), once it has read all we sent or RESET_HOLD_WAIT_S passed."""
        deadline = time.monotonic() + RESET_HOLD_WAIT_S
        read = 0
        while True:
            try:
                info = await rpc.client.tcp_info(conn.cid)
            except ChimneyError:
                return read
            got = info.get("bytes_received")
            read = got if isinstance(got, int) else read
            if read >= conn.sent or conn.aborted or time.monotonic() > deadline:
                return read
            await asyncio.sleep(0.01)

    async def abort_heard(self, conn: Conn) -> None:
        """Wait (bounded) for the reset's TcpIndicateAbort, so that the bytes held are read
        after the daemon handled the RST, never before."""
        deadline = time.monotonic() + RESET_HOLD_WAIT_S
        while not conn.aborted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stall_through_slot(
        self, conn: Conn, rec: dict[str, Any], params: dict[str, str]
    ) -> None:
        """Have the connection's own slot inject the stall between two round trips and begin
        the next one at once (`stall_now`): that round trip cannot come back before the stall
        ends, since the daemon reads nothing from the socket meanwhile. A stall injected while a
        round trip is in flight could not be told from one that does nothing."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.stall_order = (rec, params, fut)
        self.wake(conn)
        try:
            await asyncio.wait_for(asyncio.shield(fut), FAULT_AIM_WAIT_S)
        except TimeoutError:
            if conn.stall_order is not None and conn.stall_order[2] is fut:
                conn.stall_order = None  # never taken: its slot is stuck in a round trip
                raise LookupError(f"its slot took no stall within {FAULT_AIM_WAIT_S:g} s") from None
            await fut  # taken by the slot: the daemon's answer is on its way

    async def stall_now(self, conn: Conn) -> None:
        """The slot's side of `stall_through_slot`: inject, then mark the next round trip as the
        one that must wait for the stall's end.

        That round trip does not wait for the injection's answer. The daemon stalls the socket
        as it reads the request, before the round trip's send that follows it on the same RPC
        connection. Under load an answer can come seconds late (tcp.send p99 5.5 s at 10,000
        connections with no think time), after a 1.5 s stall is over, and a round trip begun
        then shows nothing of it."""
        assert conn.stall_order is not None
        rec, params, fut = conn.stall_order
        conn.stall_order = None
        rec["t0"] = time.monotonic()  # the stall's end is reckoned from here
        inject = asyncio.ensure_future(self.daemon_fault(conn, rec, params))
        await asyncio.sleep(0)  # its first step queues the request ahead of the round trip's
        rec["probe"] = "next"

        def answered(task: asyncio.Future[None]) -> None:
            exc = asyncio.CancelledError() if task.cancelled() else task.exception()
            if exc is not None:
                if not fut.done():
                    fut.set_exception(exc)
                return
            rec["t1"] = time.monotonic()
            if not fut.done():
                fut.set_result(None)

        inject.add_done_callback(answered)

    async def daemon_fault(self, conn: Conn, rec: dict[str, Any], params: dict[str, str]) -> None:
        kind = rec["kind"]
        keys: dict[str, Any] = {"conn": conn.cid}
        if kind == "daemon_reset":
            conn.expect_abort = True
        elif kind == "stall_peer":
            keys["ms"] = rec["ms"] = int(params.get("ms", DEFAULT_STALL_MS))
            # data verified from the first round trip after the end shows it came back
            rec["stall_end"] = rec["t0"] + rec["ms"] / 1000.0
        elif kind == "retrieve" and params.get("reason"):
            # every reason, HardwareFailure too, only has the NIC ask for the upload
            # (docs/faults.md `retrieve`): the abort of spec §3.7 step 3 follows a state call
            # that found the hardware corrupt, which the request alone is not
            keys["reason"] = rec["reason"] = params["reason"]
        daemon_kind = FAULT_KINDS[kind].daemon_kind
        assert daemon_kind is not None
        rec["fault_id"] = await self.rpc_of(conn).client.fault_inject(daemon_kind, **keys)

    def after_reset(self, old: Conn, new: Conn | None) -> None:
        """The slot of a reset connection reopened: the reset's outcome is data verified on the
        new connection."""
        for rec in old.faults:
            if rec["kind"] in ("peer_reset", "daemon_reset") and rec.get("injected"):
                rec["abort_seen"] = old.aborted
                if new is not None:
                    rec["new_conn"] = new.cid
                    self.c["reopened_after_reset"] += 1
                    watch(new, rec, 0)

    def finish_fault_records(self) -> None:
        for rec in self.fault_records:
            conn: Conn | None = rec.get("_conn")
            if conn is not None:
                rec["integrity_errors"] = conn.integrity_errors
                rec["lost"] = conn.lost
                if rec["kind"] in ("peer_reset", "daemon_reset", "retrieve"):
                    rec.setdefault("abort_seen", conn.aborted)
            finish(rec)
        for recs in self.obs.values():
            for rec in recs:
                finish(rec)

    async def close_controls(self) -> None:
        for control in self.controls.values():
            await control.close()
