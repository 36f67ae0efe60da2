"""What "the daemon" answers when it runs as several shards (design: scale), pure functions:
each shard's part in, one answer out.

- `merge_stats`: `stack.stats` with every counter and gauge summed over the shards, in the keys a
  daemon of one shard has, plus `shards`: each shard's own part (and `state`, `down` for a
  shard being restarted, whose part is unknown). To the summed counters it adds what the
  supervisor's `CounterCarry` carries: the counts of the shards' processes that have no part
  in the read (ended, down), so the sums never go down while a shard is restarted, nor after
  it, whichever shard answers; so do the latency histograms `/metrics` adds up.
- `merge_info`: `stack.info` of the shard answering, its layers folded over the shards (the
  gauges in a layer's description summed; a list that differs is every shard's items; any
  other value kept when every shard agrees, else `"mixed"`), plus `shard` (which shard answered) and `shards` (each one's layers and pid).
- `fault_table` / `may_touch`: the faults of every shard as one table, keyed by the fault id (a
  layer fault put into several shards has one id), with who may see and clear each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MIXED = "mixed"
#: Keys of a layer's `stack.info` description that count things in one shard (summed); every
#: other key is a setting or a state (kept when the shards agree).
INFO_GAUGES = frozenset(
    {"tcp", "paused_initiates", "connections", "outstanding_bytes", "evacuating"}
)
#: The per-process part a shard adds to its stats (shown per shard, never summed).
PROCESS = "process"

Parts = Mapping[int, Mapping[str, Any] | None]  # shard → its part, None when it is down


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def fold(values: list[Any], summed: Callable[[str], bool], key: str = "") -> Any:
    """One value from the shards' values of the same key: maps key by key, numbers summed where
    `summed(key)`, None left out (None only when every shard has None), lists kept when all
    agree and else every shard's items one after the other (a layer's lists are what each
    shard holds: host objects, connections waiting; a list stays a list), anything else kept
    when all agree and `"mixed"` when they do not."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys: dict[str, None] = {}
        for v in present:
            keys.update(dict.fromkeys(v))
        return {k: fold([v.get(k) for v in present], summed, str(k)) for k in keys}
    if all(_is_number(v) for v in present) and summed(key):
        return sum(present)
    first = present[0]
    if all(v == first for v in present[1:]):
        return first
    if all(isinstance(v, list) for v in present):
        return [item for v in present for item in v]
    return MIXED


def _always(_: str) -> bool:
    return True


def _gauge(key: str) -> bool:
    return key in INFO_GAUGES


def _down(shard: int) -> dict[str, Any]:
    return {"shard": shard, "state": "down"}


# -- counters that outlive a shard's restart ---------------------------------------------------
#: The kinds of a target's `unsent_acks` (`drivers.target.receive.UNSENT_ACK_KINDS`, named
#: here so that the supervisor need not import a driver): each a documented counter.
UNSENT_ACK_KINDS = ("challenge_rst", "challenge_syn", "ack_syn", "ack_urg")
#: Where `stack.stats` holds counters (docs/metrics.md, kind `counter`); `*` is any key (a
#: layer, a call). Every other number is a gauge.
COUNTER_PATHS: tuple[tuple[str, ...], ...] = (
    ("layers", "*", "bytes_sent"),
    ("layers", "*", "bytes_received"),
    ("layers", "*", "calls", "*"),
    *(("layers", "*", "unsent_acks", kind) for kind in UNSENT_ACK_KINDS),
    ("engine", "pending_overflows"),
    ("engine", "messages", "*"),
    ("engine", "layer_errors"),
    ("engine", "invariant_violations"),
    ("engine", "invariant_checked_nbls"),
    ("log", "write_errors"),
)


def counters(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The counters of a `stack.stats` map (`COUNTER_PATHS`), nested as there, nothing else."""
    out: dict[str, Any] = {}
    for path in COUNTER_PATHS:
        _pick(stats, path, out)
    return out


def _pick(value: Any, path: tuple[str, ...], out: dict[str, Any]) -> None:
    if not isinstance(value, Mapping):
        return
    head, rest = path[0], path[1:]
    for key in value if head == "*" else [head] if head in value else []:
        sub = value[key]
        if not rest:
            if _is_number(sub):
                out[key] = sub
        elif isinstance(sub, Mapping):
            into = out.setdefault(key, {})
            _pick(sub, rest, into)
            if not into:
                del out[key]


#: Where a shard's part of `/metrics` holds its latency histograms (`Metrics.raw`: family →
#: label value → bucket counts, then the sum): counters too, bucket by bucket.
HISTOGRAMS = "histograms"


def histogram_counts(part: Mapping[str, Any]) -> dict[str, Any]:
    """The latency histograms of a shard's part (`{"histograms": ...}`), nothing else."""
    raw = part.get(HISTOGRAMS)
    if not isinstance(raw, Mapping) or not raw:
        return {}
    return {HISTOGRAMS: {name: {v: list(h) for v, h in by.items()} for name, by in raw.items()}}


def plus(a: Any, b: Any) -> Any:
    """`a` with the numbers of `b` added key by key, and a histogram's list slot by slot (a
    copy; `b` holds counters only)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return {k: plus(a.get(k), b.get(k)) for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [plus(x, y) for x, y in zip(a, b, strict=True)]
    if _is_number(a) and _is_number(b):
        return a + b
    return b if a is None else a


def maxed(a: Any, b: Any) -> Any:
    """The larger of `a` and `b` key by key, and a histogram's list slot by slot: two readings
    of one process's counts, which only go up, give its later one whatever order they came in."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        # only where `b` has keys (a report holds what changed): the rest of `a` as it is
        out = dict(a)
        for k, v in b.items():
            out[k] = maxed(a.get(k), v)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [maxed(x, y) for x, y in zip(a, b, strict=True)]
    if _is_number(a) and _is_number(b):
        return max(a, b)
    return b if a is None else a


def changed(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """What of the counts `new` differs from `old`: maps key by key, any other value (a
    counter, a histogram's list) whole. `maxed` into `old`, it gives `new` back."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        was = old.get(key)
        if isinstance(value, Mapping) and isinstance(was, Mapping):
            sub = changed(value, was)
            if sub:
                out[key] = sub
        elif value != was:
            out[key] = value
    return out


#: The parts whose counts the supervisor records as they pass it (`CounterCarry`), and to
#: which it adds what the shards' other processes counted.
COUNTED = frozenset({"stats", "metrics"})


def counts(what: str, part: Any) -> dict[str, Any]:
    """The counts in a shard's part of `what`: its counters (`counters`), and its latency
    histograms' (`histogram_counts`) in a part of `metrics` (`{"stats", "histograms"}`) or
    of `counts` (already counts, what a shard reports)."""
    if not isinstance(part, Mapping):
        return {}
    if what == "stats":
        return counters(part)
    if what == "metrics":
        return {**counters(part.get("stats") or {}), **histogram_counts(part)}
    if what == "counts":
        return dict(part)
    return {}


@dataclass(slots=True)
class _Life:
    """What the supervisor knows of one shard's counts: those of its current process `gen` as
    last seen (`last`), and what its ended processes had reached (`base`)."""

    gen: int | None = None
    last: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)


class CounterCarry:
    """What every shard's processes counted since the daemon started, kept by the supervisor
    (docs/metrics.md "Shards": a summed counter never dips while the daemon runs, and a
    shard's restart, shard 0's included, is not the daemon's). The supervisor outlives every
    shard and every part of a daemon-wide read passes it, whichever shard asks.

    Per shard: the counts (`counts`) of its current process as last seen — in a part passing
    the supervisor, in the part of the shard that asked (sent with its ask, so it is recorded
    before anyone sees it), in the reports the shard sends every `COUNTS_INTERVAL_S` and once
    more on a clean stop — and the sum of what its ended processes had reached. A read adds to
    the running shards' own figures `carried` of every shard: its ended processes, and its
    current one as last seen when that one has no part in the read (down, starting, or ended
    while its answer came). No process is ever counted twice in a read, and each reading of
    a process counts at least what any read before used of it: the sums never go down."""

    def __init__(self) -> None:
        self.lives: dict[int, _Life] = {}

    def started(self, shard: int, gen: int) -> None:
        """Shard `shard` runs in a new process, `gen`; it counts from 0."""
        life = self.lives.setdefault(shard, _Life())
        if life.gen is not None:
            self.ended(shard, life.gen)
        life.gen = gen

    def seen(self, shard: int, gen: int, counted: Mapping[str, Any]) -> None:
        """Process `gen` of shard `shard` has counted `counted` (nothing if it has ended:
        what it counted then is what it had reached)."""
        life = self.lives.get(shard)
        if life is not None and life.gen == gen and counted:
            life.last = maxed(life.last, counted)

    def ended(self, shard: int, gen: int) -> None:
        """Process `gen` of shard `shard` is gone: its counts as last seen are its shard's for
        good."""
        life = self.lives.get(shard)
        if life is not None and life.gen == gen:
            life.base = plus(life.base, life.last)
            life.last, life.gen = {}, None

    def carried(self, shard: int, counting: bool) -> dict[str, Any]:
        """What shard `shard` adds to a read beyond its part: its ended processes' counts, and
        its current one's as last seen unless `counting` (its part is in the read)."""
        life = self.lives.get(shard)
        if life is None:
            return {}
        return life.base if counting else plus(life.base, life.last)


def merge_stats(parts: Parts, carried: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`stack.stats` of the whole daemon: sums in the usual keys (the running shards' own
    figures, plus the `carried` counters of the shards' other processes, from the supervisor's
    `CounterCarry`), each shard's own under `shards`."""
    running = [dict(p) for p in parts.values() if p is not None]
    total: dict[str, Any] = fold([_without(p, PROCESS) for p in running], _always) or {}
    if carried:
        total = plus(total, _without(carried, HISTOGRAMS))
    total["shards"] = [
        _down(k) if p is None else {"shard": k, "state": "running", **p}
        for k, p in sorted(parts.items())
    ]
    return total


def merge_info(parts: Parts, home: int) -> dict[str, Any]:
    """`stack.info` of the whole daemon, as the shard `home` answers it."""
    mine = parts[home]
    assert mine is not None, "the answering shard is running"
    running = [p for p in parts.values() if p is not None]
    info = _without(dict(mine), PROCESS)
    layers: list[dict[str, Any]] = []
    for i, layer in enumerate(mine.get("layers", [])):
        same = [p["layers"][i] for p in running if len(p.get("layers", [])) > i]
        folded = fold(same, _gauge)
        layers.append(folded if isinstance(folded, dict) else dict(layer))
    info["layers"] = layers
    info["shard"] = home
    info["shards"] = [
        _down(k)
        if p is None
        else {"shard": k, "state": "running", **(p.get(PROCESS) or {}), "layers": p["layers"]}
        for k, p in sorted(parts.items())
    ]
    return info


def _without(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


# -- faults ----------------------------------------------------------------------------------------
#: Keys a shard adds to each fault of its part (`shard_faults`), not shown to clients.
#: What a fault hit, per shard (`FaultRegistry.entries`): a raise_next's and a fail_next's.
HIT_KEYS = ("raised", "failed")
INTERNAL_FAULT_KEYS = (
    "active",
    "home",
    "orphan",
    "everywhere",
    *HIT_KEYS,
    *(f"{k}_dropped" for k in HIT_KEYS),
)


@dataclass(slots=True)
class FaultView:
    """One fault as the daemon holds it: where (`shards`), made by a client of which shard
    (`home`), and whether its maker has left (`orphan`: anyone may clear it)."""

    id: int
    spec: dict[str, Any]
    home: int
    shards: list[int] = field(default_factory=list)
    # where it still acts: a fail_next's or raise_next's `count` is each shard's (its layers'
    # calls are counted in its own process, synchronously), so it runs out shard by shard
    active_shards: list[int] = field(default_factory=list)
    active: bool = False
    orphan: bool = True
    everywhere: bool = False  # meant for every shard (no `shard` key): restored on restarts
    # what a raise_next ("raised") or fail_next ("failed") hit, from every shard, and how
    # many hits a shard kept no room for
    hits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    hits_dropped: dict[str, int] = field(default_factory=dict)

    def as_map(self, used: bool = False) -> dict[str, Any]:
        """What fault.list shows: the fault map, the shards that hold it and those where it still
        acts (a count runs out in each shard on its own); with `used`
        (fault.list opts) whether it is active, and what a raise_next or fail_next hit."""
        out = {
            "id": self.id,
            **self.spec,
            "shards": sorted(self.shards),
            "active_shards": sorted(self.active_shards),
        }
        if used:
            out["active"] = self.active
            out.update(self.hits)
            out.update((f"{k}_dropped", n) for k, n in self.hits_dropped.items() if n)
        return out


def shard_faults(
    entries: Iterable[Mapping[str, Any]],
    me: int,
    homes: Mapping[int, int],
    orphan: Callable[[int], bool],
) -> list[dict[str, Any]]:
    """A shard's part of the fault table: each fault it holds (`entries`, with `active`), the
    shard whose client made it (`homes`: faults put here by another shard; the rest are its
    own), and for its own whether the maker has left (`orphan(id)`)."""
    out = []
    for e in entries:
        fid = int(e["id"])
        home = homes.get(fid, me)
        out.append({**e, "home": home, "orphan": orphan(fid) if home == me else None})
    return out


def fault_table(parts: Parts) -> dict[int, FaultView]:
    """Every shard's faults as one table. A fault's maker is known only in its home shard: a
    fault whose home shard is down, or no longer holds it (restarted), has lost its maker."""
    table: dict[int, FaultView] = {}
    for shard, part in sorted(parts.items()):
        for e in (part or {}).get("faults", []):
            fid = int(e["id"])
            view = table.get(fid)
            if view is None:
                spec = {k: v for k, v in e.items() if k != "id" and k not in INTERNAL_FAULT_KEYS}
                view = table[fid] = FaultView(fid, spec, int(e["home"]))
            view.shards.append(shard)
            view.active = view.active or bool(e.get("active"))
            if e.get("active"):
                view.active_shards.append(shard)
            view.everywhere = view.everywhere or bool(e.get("everywhere"))
            for key in HIT_KEYS:  # each shard's hits, saying which shard they were in
                if key in e:
                    hits = view.hits.setdefault(key, [])
                    hits += ({**r, "shard": shard} for r in e[key])
                    dropped = int(e.get(f"{key}_dropped", 0))
                    view.hits_dropped[key] = view.hits_dropped.get(key, 0) + dropped
            if shard == view.home:
                view.orphan = bool(e.get("orphan"))
    return table


def may_touch(view: FaultView, me: int, admin: bool, mine: Callable[[int], bool]) -> bool:
    """Whether a client of shard `me` may see and clear the fault: an admin always; a fault
    made in this shard as `rpc.ownership` says (`mine(id)`: its maker, or anyone once the maker
    left); a fault made in another shard only once its maker has left (a client lives in one
    shard, so it cannot be that fault's maker)."""
    if admin:
        return True
    if view.home == me:
        return mine(view.id)
    return view.orphan


__all__ = [
    "COUNTED",
    "COUNTER_PATHS",
    "HISTOGRAMS",
    "INFO_GAUGES",
    "MIXED",
    "UNSENT_ACK_KINDS",
    "CounterCarry",
    "FaultView",
    "changed",
    "counters",
    "counts",
    "fault_table",
    "fold",
    "histogram_counts",
    "maxed",
    "may_touch",
    "merge_info",
    "merge_stats",
    "plus",
    "shard_faults",
]
