"""Pure parsers of the command line's values: sizes, durations, payload distributions."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """`"64k"` → 65536, `"1.5m"`, `"512"`, `"4KiB"`; binary units; must be at least 1."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 512, 4k, 1.5m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
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
    return value / 1000.0 if unit == "ms" else value * 60.0 if unit in ("m", "min") else value


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
        return PayloadDist("fixed", (lo,)) if lo == hi else PayloadDist("range", (lo, hi))
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty payload specification")
    sizes = tuple(parse_size(p) for p in parts)
    return PayloadDist("fixed", sizes) if len(sizes) == 1 else PayloadDist("choice", sizes)
