"""The methods that answer for the whole daemon when it runs as several shards (design: scale),
and each shard's part of their answers.

A client and all it owns live in one shard, so every other method is the shard's own
(`methods`). These ask the other shards through the supervisor (`ClusterAPI`):
- `stack.info`, `stack.stats`, `stack.metrics`: every shard's part, summed and broken down
  per shard (`observe.aggregate`), the counters with what the supervisor carries of the
  shards' other processes (`ClusterAPI.gather_counted`);
- `fault.inject` on a layer: the fault goes into that layer in every shard (or the one named by
  the extension key `shard`), under one id from this shard's range; a shard that cannot take it
  undoes it everywhere;
- `fault.list`, `fault.clear`: the faults of every shard as one table, with the ownership rules
  of `rpc.ownership` (a fault's maker is known in its own shard).
An admin's `events.subscribe "*"` hears every shard's events (`session.Session.subscribe`), and
answers once every running shard forwards them (`events_subscribe`).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Coroutine
from typing import Any, NamedTuple

import structlog

from chimneyd.api import ClusterAPI, EngineAPI, EngineError, ErrorCode
from chimneyd.observe.aggregate import (
    FaultView,
    counts,
    fault_table,
    may_touch,
    merge_info,
    merge_stats,
    shard_faults,
)
from chimneyd.observe.logging import write_errors
from chimneyd.observe.metrics import installed, sharded_text

from . import methods
from . import params as P
from .caller import Caller
from .ownership import Ownership

log = structlog.get_logger("chimneyd.rpc")

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

#: The methods that answer for the whole daemon here. In one process they answer at once, so
#: they are not counted against `rpc.max_in_flight` (docs/rpc.md); here they wait for the other
#: shards, and the session counts them apart (`session.Session.dispatch`): a client whose slots
#: are all held (by a `delay` fault, say) can still read the stats and clear the fault, and
#: `stack.stats` does not count its own request in `rpc.in_flight`.
DAEMON_WIDE_METHODS = frozenset(
    {
        "stack.info",
        "stack.stats",
        "stack.metrics",
        "fault.inject",
        "fault.list",
        "fault.clear",
        "events.subscribe",
    }
)
#: How many daemon-wide requests one client may have waiting at once; one more is `LIMIT`. Each
#: asks every shard and waits at most `daemon.control_timeout_s`: a small bound keeps one
#: client from queueing unbounded work on every shard, while never refusing a client that asks
#: one at a time.
DAEMON_WIDE_IN_FLIGHT = 8


class LiveNic(NamedTuple):
    """A NIC as the faults a shard took as they came left it (`ShardParts.live`): `last`, the
    service the last `nic_down` (False) or `nic_up` (True) of it asked (None: none did), and
    whether a `nic_down` of it was cleared since (`cleared`). The clear puts the NIC back
    only if no `nic_down` of it is listed (faults.py `_undo_when_last`): listed then, or
    by the restore since, that took it before (`service`)."""

    last: bool | None
    cleared: bool

    def service(self, held: bool) -> bool | None:
        """In service (True) or out, as these faults leave the NIC with a `nic_down` of it
        listed (`held`) or none; None: as the faults before them left it."""
        return True if self.cleared and not held else self.last


# -- one shard's parts ------------------------------------------------------------------------------
class ShardParts:
    """What this shard answers when the daemon asks every shard (the supervisor's `part`)."""

    def __init__(self, index: int, engine: EngineAPI, server: Any) -> None:
        self.index = index
        self.engine = engine
        self.server = server  # the RpcServer: its client counts, its ownership
        self.homes: dict[int, int] = {}  # faults put here by another shard → that shard
        # layer faults meant for every shard (no `shard` key): a shard that (re)starts takes
        # them from the others (`restore_faults`), so they last until cleared
        self.everywhere: set[int] = set()
        # each NIC's service under its MUX (in service: True) as the `nic_down`s and `nic_up`s
        # meant for every shard left it here, in the order this shard took them; a NIC absent
        # is in service. What a restarted shard takes (`restore_faults`): the faults put into
        # one shard only go with its process
        self.nics: dict[str, bool] = {}
        # the NICs faults this shard took as they came (not those a restore brought) put in or
        # out of service, or back by a `nic_down`'s clear (`LiveNic`). A restore's end leaves
        # them so: the faults the shard missed while it started came before any it took once
        # it listened
        self.live: dict[str, LiveNic] = {}
        # the faults a restore brought here: one no other shard lists at the next restore was
        # cleared while this shard started (the clear did not reach it, `part_restored`)
        self.restored: set[int] = set()
        process_info()  # opens /proc/self/statm while descriptors are plenty

    @property
    def ownership(self) -> Ownership:
        own: Ownership = self.server.ownership
        return own

    def __call__(self, what: str, arg: Any = None) -> Any:
        part = getattr(self, f"part_{what}", None)
        if part is None:
            raise EngineError(ErrorCode.NO_METHOD, f"no shard part {what!r}")
        return part(arg)

    def part_info(self, _: Any) -> dict[str, Any]:
        return {**self.engine.info(), "process": process_info()}

    def part_stats(self, _: Any) -> dict[str, Any]:
        stats = self.engine.stats()
        stats["rpc"] = self.server.rpc_stats()
        stats["log"] = {"write_errors": write_errors()}
        stats["process"] = process_info()
        return stats

    def part_metrics(self, _: Any) -> dict[str, Any]:
        m = installed()
        return {"stats": self.part_stats(None), "histograms": m.raw() if m is not None else {}}

    def part_counts(self, _: Any) -> dict[str, Any]:
        """What this shard reports to the supervisor (`Cluster.report`): its counters and its
        latency histograms' counts, without the gauges of its process, which cost more to
        read (`process_info` lists its descriptors)."""
        stats = self.engine.stats()
        stats["log"] = {"write_errors": write_errors()}
        m = installed()
        return counts("metrics", {"stats": stats, "histograms": m.raw() if m is not None else {}})

    def part_faults(self, _: Any) -> dict[str, Any]:
        own = self.ownership

        def orphan(fid: int) -> bool:
            return own.fault_owner.get(fid) is None

        entries = self.engine.fault_entries()
        faults = shard_faults(entries, self.index, self.homes, orphan)
        for f in faults:
            f["everywhere"] = f["id"] in self.everywhere
        return {"faults": faults, "nics": dict(self.nics)}

    def part_conns(self, arg: Any) -> dict[str, Any]:
        """This shard's part of the web view's connection list: how many connections it holds,
        its first id (the shards are listed in id order) and the rows of `limit` of them from
        `offset`."""
        from chimneyd.observe.web.live import conn_row  # aiohttp: only when the view is on

        ids = self.engine.conn_ids()
        offset, limit = int(arg["offset"]), int(arg["limit"])
        rows = (conn_row(self.engine, i) for i in ids[offset : offset + limit])
        return {
            "total": len(ids),
            "first": ids[0] if ids else None,
            "rows": [r for r in rows if r is not None],
        }

    def part_forwarding(self, _: Any) -> bool:
        """Answered after every control message the supervisor sent this shard before the
        request, a `forward` among them (one channel, read in order, notifications handled
        as they are read): the answer itself says this shard forwards its events, if asked to."""
        return True

    def part_fault_mirror(self, arg: Any) -> int:
        """A client (of this shard or another) made a layer fault: put it here under the same
        id. Nothing if it is here already (a restarted shard may be told twice)."""
        fid, spec, home = int(arg["id"]), dict(arg["spec"]), int(arg["home"])
        everywhere = bool(arg.get("everywhere"))
        if not any(int(e["id"]) == fid for e in self.engine.fault_entries()):
            self.engine.fault_inject(spec, fid)
            if arg.get("restored"):
                self.restored.add(fid)
            if spec.get("kind") in ("nic_down", "nic_up"):
                nic, up = self._nic(spec["layer"]), spec["kind"] == "nic_up"
                if everywhere:
                    self.nics[nic] = up
                if not arg.get("restored"):
                    self.live[nic] = LiveNic(up, cleared=False)
        self.homes[fid] = home
        if everywhere:
            self.everywhere.add(fid)
        return fid

    def part_restored(self, arg: dict[str, Any]) -> dict[str, Any]:
        """A restore's end (`restore_faults`), once the others answered: `listed`, the ids of
        every fault they hold; `nics`, their NICs' service as their faults meant for every
        shard left it. A fault an earlier restore brought here that none of them lists any
        more was cleared while this shard started: cleared here too. Then each NIC as
        `_nics_as` sets it. Returns the faults cleared and the NICs set."""
        gone = sorted(self.restored.difference(int(fid) for fid in arg["listed"]))
        for fid in gone:
            self._clear(fid, live=False)
        return {"cleared": gone, "nics": self._nics_as(arg["nics"])}

    def _nics_as(self, arg: dict[str, bool]) -> dict[str, bool]:
        """Each NIC of `arg` in service (True) or out, as the other shards' faults meant for
        every shard left it, unless those here leave it so already: a NIC is put back once,
        not again at the second restore. But a NIC a fault this shard took once it listened
        decided last (`live`: one put into it alone, say) is as that fault left it, whatever
        the restore took meanwhile (a `nic_down` restored late takes it out again): what the
        restore brings came before. No fault is made: the NIC is put in or out as `nic_up` and
        `nic_down` do, under no id. Returns what it set."""
        done: dict[str, bool] = {}
        held = {
            self._nic(e["layer"])
            for e in self.engine.fault_entries()
            if e.get("kind") == "nic_down"
        }
        for nic in sorted(set(arg) | set(self.live)):
            up = arg.get(nic, self.nics.get(nic, True))
            known = self.nics.get(nic, True) == up
            if nic in arg:
                self.nics[nic] = up
            live = self.live[nic].service(nic in held) if nic in self.live else None
            if live is None and known:
                continue
            want = up if live is None else live
            try:
                self.engine.nic_in_service(nic, want)
            except EngineError as err:  # under no MUX here, though under one in the others
                log.error("shard_nic_restore_failed", nic=nic, error=str(err))
                continue
            done[nic] = want
        return done

    def _nic(self, layer: Any) -> str:
        """The one name of the NIC a `nic_down` or `nic_up` named `layer`: a NIC under IMs and
        the IMs between it and the MUX are one (docs/faults.md `nic_down`), and `nics`,
        `live` and the listed `nic_down`s must agree on it (`Engine.team_member`). `layer`
        itself when it is under no MUX here."""
        try:
            return self.engine.team_member(str(layer))
        except EngineError:
            return str(layer)

    def part_fault_clear(self, arg: Any) -> bool:
        """Clear the fault `arg` here (already checked by the shard that was asked). False if
        it was not here any more."""
        return self._clear(int(arg), live=True)

    def _clear(self, fid: int, live: bool) -> bool:
        """Clear `fid` here; `live`: as it comes (not a clear a restore found missed)."""
        self.restored.discard(fid)
        self.homes.pop(fid, None)
        everywhere = fid in self.everywhere
        self.everywhere.discard(fid)
        self.ownership.forget_fault(fid)
        entry = next((e for e in self.engine.fault_entries() if int(e["id"]) == fid), None)
        try:
            self.engine.fault_clear(fid)
        except EngineError as err:
            if err.code != ErrorCode.NOT_FOUND:
                raise
            return False
        if entry is not None and entry.get("kind") == "nic_down":
            # back in service once no nic_down of the NIC is listed (faults.py
            # `_undo_when_last`): here, as a restore's end judges it (`LiveNic`), and as the
            # faults meant for every shard go, once none of those is (`nics`)
            nic = self._nic(entry["layer"])
            downs = [
                int(e["id"])
                for e in self.engine.fault_entries()
                if e.get("kind") == "nic_down" and self._nic(e.get("layer")) == nic
            ]
            last = self.live.get(nic)
            if live:
                self.live[nic] = LiveNic(last.last if last else None, cleared=True)
            if everywhere and not self.everywhere.intersection(downs):
                self.nics[nic] = True
        return True

    def part_fault_clear_all(self, _: Any) -> bool:
        # every nic_down cleared: each NIC one held out is back in service here
        downs = {
            self._nic(e.get("layer"))
            for e in self.engine.fault_entries()
            if e.get("kind") == "nic_down"
        }
        self.engine.fault_clear(None)
        self.live.update(dict.fromkeys(downs | set(self.live), LiveNic(True, cleared=False)))
        self.restored.clear()
        self.ownership.forget_all_faults()
        self.homes.clear()
        self.everywhere.clear()
        self.nics.clear()
        return True


_statm: int | None = None


def process_info() -> dict[str, Any]:
    """The shard's process: pid, resident memory, open descriptors and their limit. Answers
    even when the process is out of descriptors (then `open_fds` is None): /proc/self/statm
    is kept open from the first call, and re-read in place."""
    global _statm
    rss_kb: int | None = None
    fds: int | None = None
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY)
        rss_kb = int(os.pread(_statm, 256, 0).split()[1]) * PAGE_KB
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return {
        "pid": os.getpid(),
        "rss_kb": rss_kb,
        "open_fds": fds,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


# -- the methods --------------------------------------------------------------------------------
def _cluster(c: Caller) -> ClusterAPI:
    cluster = c.cluster
    assert cluster is not None, "the sharded methods serve a shard"
    return cluster


async def stack_info(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 0, 0, "stack.info")
    cl = _cluster(c)
    info = merge_info(await cl.gather("info"), cl.index)
    info["rpc"] = c.describe_rpc()
    return info


async def stack_stats(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 0, 0, "stack.stats")
    return merge_stats(*await _cluster(c).gather_counted("stats"))


async def stack_metrics(c: Caller, p: list[Any]) -> str:
    """Extension: every shard's gauges and counters summed, and each shard's, as Prometheus
    text."""
    P.arity(p, 0, 0, "stack.metrics")
    return sharded_text(*await _cluster(c).gather_counted("metrics"))


async def fault_inject(c: Caller, p: list[Any]) -> int:
    P.arity(p, 1, 1, "fault.inject")
    cl = _cluster(c)
    spec = p[0]
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise P.invalid("spec must be a map with a string 'kind'")
    shard = spec.get("shard")
    spec = {k: v for k, v in spec.items() if k != "shard"}
    if shard is not None and (type(shard) is not int or not 0 <= shard < cl.count):
        raise P.invalid(f"fault key 'shard' must be a shard number 0..{cl.count - 1}")
    if "conn" in spec:
        # a connection lives in its owner's shard, and so does a fault on it
        if shard not in (None, cl.index):
            raise P.invalid(f"a fault on a connection acts in its own shard ({cl.index})")
        return methods.fault_inject(c, [spec])
    targets = list(range(cl.count)) if shard is None else [shard]
    fid = c.engine.fault_reserve()
    # everywhere: also in a shard that is down now or restarted later (`restore_faults`)
    mirror = {"id": fid, "spec": spec, "home": cl.index, "everywhere": shard is None}
    if cl.index in targets:
        cl.local("fault_mirror", mirror)  # a bad spec fails here, before any shard has it
    others = [t for t in targets if t != cl.index]
    replies = await cl.ask("fault_mirror", mirror, others)
    failed = {k: r for k, r in replies.items() if r.state == "failed"}
    if shard is not None and replies.get(shard) is not None and replies[shard].state == "down":
        failed[shard] = replies[shard]
    if failed:
        # all or nothing: whoever took it gives it back — a shard that did not answer too, as it
        # may take it late (the clear follows the fault on its channel); in the background, so
        # that this answer does not wait for a slow shard twice
        if cl.index in targets:
            cl.local("fault_clear", fid)
        back = [k for k, r in replies.items() if r.state != "down"]
        c.background(cl.ask("fault_clear", fid, back))
        first, reply = min(failed.items())
        if reply.error is not None:
            raise reply.error
        raise EngineError(ErrorCode.INVALID_STATE, f"shard {first} is down (being restarted)")
    c.ownership.add_fault(c.holdings, fid, None)
    return fid


def events_subscribe(c: Caller, p: list[Any]) -> bool | Coroutine[Any, Any, bool]:
    """An admin's `"*"` hears every shard: its shard tells the supervisor (`Cluster.watch`),
    which tells the other shards to forward their events. The answer waits until every
    running shard has had that word, so that any event after `true`, in any shard, is heard
    (rpc-contract: `true`, then notifications): the `forwarding` part is asked after the
    `watch` on the same channel, and the supervisor sends each shard its `forward` before that
    part. A shard that does not answer within `daemon.control_timeout_s` gets its `forward`
    late: the answer is still `true` (the subscription is in place), and a warning logged.

    The subscription itself is made here, at once, as in one process (a request pipelined
    after it is served after it); only the answer waits."""
    result = methods.events_subscribe(c, p)
    if not (P.is_all(p[0]) and c.holdings.admin):
        return result  # this client's own connections: all in this shard
    return _forwarded(_cluster(c), result)


async def _forwarded(cl: ClusterAPI, result: bool) -> bool:
    others = [k for k in range(cl.count) if k != cl.index]
    replies = await cl.ask("forwarding", None, others)
    for shard, reply in sorted(replies.items()):
        if reply.state == "failed":
            log.warning("rpc_subscribe_shard_late", shard=shard, error=str(reply.error))
    return result


# -- the web view of the whole daemon (served by shard 0) ----------------------------------------
async def web_stats(cl: ClusterAPI) -> dict[str, Any]:
    """`/api/stats`'s source: every shard's stats summed, as `stack.stats` answers."""
    return merge_stats(*await cl.gather_counted("stats"))


async def web_conns_page(cl: ClusterAPI, page: int, size: int) -> dict[str, Any]:
    """`/api/conns`: page `page` of every shard's connections in id order (each shard's ids
    are a range of their own), as `LiveHub.conns_page` gives one shard's. Two rounds: how many
    each shard holds, then the rows of the shards the page covers (a connection opened or
    closed in between may shift the page by as much)."""
    counts = await cl.gather("conns", {"offset": 0, "limit": 0})
    order = sorted((p["first"], k, p["total"]) for k, p in counts.items() if p and p["total"])
    total = sum(n for _, _, n in order)
    pages = max(1, math.ceil(total / size))
    page = min(page, pages - 1)
    start, end = page * size, (page + 1) * size
    rows: list[dict[str, Any]] = []
    pos = 0
    for _, k, n in order:
        lo, hi = max(start, pos), min(end, pos + n)
        pos += n
        if lo >= hi:
            continue
        arg = {"offset": lo - (pos - n), "limit": hi - lo}
        if k == cl.index:
            rows += cl.local("conns", arg)["rows"]
            continue
        reply = (await cl.ask("conns", arg, [k]))[k]
        if reply.state == "failed":
            raise reply.error or EngineError(ErrorCode.INTERNAL, f"shard {k}: no answer")
        if reply.state == "ok":  # else down since: its connections are gone
            rows += reply.result["rows"]
    return {
        "type": "conns",
        "total": total,
        "page": page,
        "pages": pages,
        "size": size,
        "rows": rows,
    }


async def restore_faults(cl: ClusterAPI) -> int:
    """A shard that starts (again) takes the daemon's active layer faults meant for every shard
    from the shards that hold them (README: a fault on a layer reaches that layer in every
    shard and lasts until cleared), under their ids and with their makers' shards. Called
    before the shard listens (no client of it sees a layer without its faults) and again once
    it is running (a fault made while it was starting was not mirrored to it: the supervisor
    answers `down` for a shard not running yet); a fault it has already is left as it is,
    but one the first restore brought that none of the others lists at the second was
    cleared meanwhile, and is cleared here too (the clear did not reach it either). A fault
    put into one shard only (`shard` key) goes with that shard's process.

    Under a MUX, each NIC then is in or out of service as the `nic_down`s and `nic_up`s meant
    for every shard left it in the others (their `nics`, `ShardParts`): a `nic_up` acts at
    once and is not taken again, but a NIC it put back is back here too, and one a later
    `nic_down` took out stays out (docs/faults.md `nic_up`); a NIC a fault this shard took
    once it listened put in or out stays as that fault left it (`ShardParts.live`: the
    faults it missed came before). Done once the others have answered, with nothing awaited
    between: what they answered is applied whole. Returns how many faults were put here."""
    others = [k for k in range(cl.count) if k != cl.index]
    replies = await cl.ask("faults", None, others)
    parts = {k: r.result for k, r in replies.items() if r.state == "ok"}
    restored = 0
    table = fault_table(parts)
    for view in table.values():
        if not (view.everywhere and view.active):
            continue
        mirror = {
            "id": view.id,
            "spec": view.spec,
            "home": view.home,
            "everywhere": True,
            "restored": True,
        }
        try:
            cl.local("fault_mirror", mirror)
        except EngineError as err:  # a layer this shard's topology lacks: a bug
            log.error("shard_fault_restore_failed", fault=view.id, error=str(err))
            continue
        restored += 1
    # nothing heard: nothing to set (what the shard took since is as it left it)
    end: dict[str, Any] = {"cleared": [], "nics": {}}
    if parts:
        end = cl.local("restored", {"listed": sorted(table), "nics": _nics_of(parts)})
    log.info("shard_faults_restored", faults=restored, shards=sorted(parts), **end)
    return restored


def _nics_of(parts: dict[int, Any]) -> dict[str, bool]:
    """Each NIC's service as the faults meant for every shard left it in the other shards:
    in service only where every one that answered has it so (they differ only while a fault
    is on its way to them all, and reaches this shard too once it runs)."""
    out: dict[str, bool] = {}
    for part in parts.values():
        for nic, up in ((part or {}).get("nics") or {}).items():
            out[str(nic)] = out.get(str(nic), True) and bool(up)
    return out


def _may(c: Caller, me: int, view: FaultView) -> bool:
    own, h = c.ownership, c.holdings
    return may_touch(view, me, h.admin, lambda fid: own.may_touch_fault(h, fid))


async def fault_list(c: Caller, p: list[Any]) -> list[dict[str, Any]]:
    """Extension in each fault's map: `shards`, the shards that hold it; with opts
    `{"used": true}`, the faults that ran their course too (`active`, `raised`, `failed`)."""
    P.arity(p, 0, 1, "fault.list")
    used = P.opts(P.optional(p, 0), {"used": bool}, "fault.list").get("used", False)
    cl = _cluster(c)
    table = fault_table(await cl.gather("faults"))
    return [
        v.as_map(used)
        for _, v in sorted(table.items())
        if (v.active or used) and _may(c, cl.index, v)
    ]


async def fault_clear(c: Caller, p: list[Any]) -> bool:
    P.arity(p, 1, 1, "fault.clear")
    cl = _cluster(c)
    if P.is_all(p[0]) and c.holdings.admin:
        cl.local("fault_clear_all")
        others = [k for k in range(cl.count) if k != cl.index]
        _raise_failed(await cl.ask("fault_clear_all", None, others))
        return True
    fid = None if P.is_all(p[0]) else P.pos_int(p[0], "fault_id")
    table = fault_table(await cl.gather("faults"))
    if fid is not None:
        view = table.get(fid)
        if view is None or not _may(c, cl.index, view):
            raise EngineError(ErrorCode.NOT_FOUND, f"no fault {fid}")
        await _clear_everywhere(c, cl, view)
        return True
    # "*": every fault this client may touch (its own used-up ones included)
    for view in table.values():
        if _may(c, cl.index, view) and (view.active or view.id in c.holdings.faults):
            await _clear_everywhere(c, cl, view)
    for mine in list(c.holdings.faults):
        c.ownership.forget_fault(mine)
    return True


async def _clear_everywhere(c: Caller, cl: ClusterAPI, view: FaultView) -> None:
    if cl.index in view.shards:
        cl.local("fault_clear", view.id)
    else:
        c.ownership.forget_fault(view.id)
    others = [k for k in view.shards if k != cl.index]
    _raise_failed(await cl.ask("fault_clear", view.id, others))


def _raise_failed(replies: dict[int, Any]) -> None:
    for _, reply in sorted(replies.items()):
        if reply.state == "failed" and reply.error is not None:
            raise reply.error


#: The method table of a shard: the contract's, with these answering for every shard.
SHARDED_METHODS: dict[str, methods.Method] = {
    **methods.METHODS,
    "stack.info": stack_info,
    "stack.stats": stack_stats,
    "stack.metrics": stack_metrics,
    "fault.inject": fault_inject,
    "fault.list": fault_list,
    "fault.clear": fault_clear,
    "events.subscribe": events_subscribe,
}

__all__ = [
    "DAEMON_WIDE_IN_FLIGHT",
    "DAEMON_WIDE_METHODS",
    "SHARDED_METHODS",
    "ShardParts",
    "process_info",
    "restore_faults",
    "web_conns_page",
    "web_stats",
]
