"""Pure parsers of the command line's values: sizes, durations, payload distributions, and
numbers within bounds. Each refuses what no run can mean (nan, inf, a negative count, a month of
think time) with a ValueError that says what it takes, so that the command line stops with a
usage error before anything starts instead of running something other than what was asked."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

#: The longest duration anything takes (--duration, --drain-timeout, a fault's @TIME or /for=):
#: far beyond any soak; a larger one is a typo (milliseconds given as seconds).
MAX_DURATION_S = 30 * 24 * 3600.0
#: The largest payload: one tcp.send carries a whole payload, and the daemon drops a client
#: whose request is larger than its rpc.max_message_bytes (8 MiB by default; rpc-contract,
#: "larger than the configured limit"), so 1 KiB is left for the request around the bytes.
MAX_PAYLOAD = 8 * 1024 * 1024 - 1024

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """`"64k"` → 65536, `"1.5m"`, `"512"`, `"4KiB"`; binary units; must be at least 1."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 512, 4k, 1.5m)")
    number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(number):  # 400 digits make inf, which no int holds
        raise ValueError(f"not a size: {text!r} (examples: 512, 4k, 1.5m)")
    value = int(number)
    if value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from `"20s"`, `"500ms"`, `"1.5m"` or a bare number of seconds."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(
            f"expected a duration like 30s, 500ms, 1.5m or 2min (a bare number: seconds), "
            f"got {text!r}"
        )
    value = float(m.group(1))
    unit = m.group(2) or "s"
    seconds = value / 1000.0 if unit == "ms" else value * 60.0 if unit in ("m", "min") else value
    if not seconds <= MAX_DURATION_S:  # (inf too: 400 digits)
        raise ValueError(f"a duration is at most 30 days, got {text!r}")
    return seconds


def parse_positive_duration(text: str) -> float:
    """`parse_duration`, and more than 0 (a hold or a wait of nothing means nothing)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {text!r}")
    return seconds


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def parse_number(text: str, low: float, high: float, *, above_low: bool = False) -> float:
    """A finite number within `low`..`high` (above `low` when `above_low`)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    if value < low or (above_low and value == low):
        raise ValueError(
            f"must be {'more than' if above_low else 'at least'} {_num(low)}, got {text!r}"
        )
    if value > high:
        raise ValueError(f"must be at most {_num(high)}, got {text!r}")
    return value


def parse_count(text: str, low: int, high: int) -> int:
    """A whole number within `low`..`high`."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value < low:
        raise ValueError(f"must be at least {low}, got {text!r}")
    if value > high:
        raise ValueError(f"must be at most {high}, got {text!r}")
    return value


def fmt_size(n: int) -> str:
    for unit, div in (("m", 1024**2), ("k", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


@dataclass(frozen=True, slots=True)
class PayloadDist:
    """Sizes of the payloads sent per echo round trip.

    `range`: log-uniform between `values[0]` and `values[1]` (small and large sizes equally
    represented per octave); `choice`: one of `values`, uniformly; `fixed`: always `values[0]`.
    """

    kind: str
    values: tuple[int, ...]

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return rng.choice(self.values)
        lo, hi = self.values
        return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))

    @property
    def max_size(self) -> int:
        return max(self.values)

    def describe(self) -> str:
        if self.kind == "range":
            return f"{fmt_size(self.values[0])}..{fmt_size(self.values[1])} log-uniform"
        return ",".join(fmt_size(v) for v in self.values)


def parse_payload(text: str) -> PayloadDist:
    """`"1k:64k"` (range), `"1k,4k,64k"` (choice) or `"16k"` (fixed)."""
    text = text.strip()
    if ":" in text:
        lo_s, _, hi_s = text.partition(":")
        lo, hi = parse_size(lo_s), parse_size(hi_s)
        if lo > hi:
            raise ValueError(f"payload range {text!r}: low end above high end")
        _check_payload(text, hi)
        return PayloadDist("fixed", (lo,)) if lo == hi else PayloadDist("range", (lo, hi))
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty payload specification")
    sizes = tuple(parse_size(p) for p in parts)
    _check_payload(text, max(sizes))
    return PayloadDist("fixed", sizes) if len(sizes) == 1 else PayloadDist("choice", sizes)


def _check_payload(text: str, largest: int) -> None:
    if largest > MAX_PAYLOAD:
        raise ValueError(
            f"payload {text!r}: a payload is at most {fmt_size(MAX_PAYLOAD)} (one tcp.send "
            "carries it, and the daemon refuses a request above 8 MiB by default)"
        )
