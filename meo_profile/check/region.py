"""Regions: a claim about every measured point in a part of the configuration space, rather than
about listed configurations ("MEO at least 1.2× faster than vanilla wherever B·L ≥ 512").

A region bounds coordinates of a configuration (`COORDINATES`): a spec field, or a quantity
derived from several, such as the tokens one forward puts through the model. Each point the
results hold inside it is judged on its own: pass, fail, or unmeasured (one side of a ratio
without the other), and every point is listed.

In a claims file:

    region: {tokens_per_forward: {at_least: 512}}     # B·L ≥ 512 (B at a decode step)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meo_profile.core.units import format_value, parse_number
from meo_profile.models.conditions import parse_workload


def tokens_per_forward(fields: dict[str, Any]) -> float | None:
    """B·L for a prefill, B for a decode step (one token per sequence); None for a workload of
    several forwards (generate) or fields that do not say."""
    B, L = fields.get("batch_size"), fields.get("seq_len")
    workload = parse_workload(fields.get("workload") or "prefill")
    if B is None or L is None or workload.name == "generate":
        return None
    return B * (1 if workload.decodes else L)


def _field(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda fields: fields.get(name)


# name -> (how to read it from a record or a spec's fields, how to write it in a sentence)
COORDINATES: dict[str, tuple[Callable[[dict[str, Any]], float | None], str]] = {
    "tokens_per_forward": (tokens_per_forward, "B·L"),
    "batch_size": (_field("batch_size"), "B"),
    "seq_len": (_field("seq_len"), "L"),
    "context": (_field("context"), "C"),
    "num_experts": (_field("num_experts"), "E"),
    "top_k": (_field("top_k"), "k"),
}
LIMITS = ("at_least", "at_most")


@dataclass(frozen=True)
class Bound:
    coordinate: str
    at_least: float | None = None
    at_most: float | None = None

    def holds(self, fields: dict[str, Any]) -> bool:
        value = COORDINATES[self.coordinate][0](fields)
        if value is None or value != value:  # not defined here (NaN: a table's empty cell)
            return False
        return ((self.at_least is None or value >= self.at_least)
                and (self.at_most is None or value <= self.at_most))

    def describe(self) -> str:
        name = COORDINATES[self.coordinate][1]
        low, high = (None if v is None else format_value(v, "").strip()
                     for v in (self.at_least, self.at_most))
        if low is not None and high is not None:
            return f"{low} ≤ {name} ≤ {high}"
        return f"{name} ≥ {low}" if low is not None else f"{name} ≤ {high}"


@dataclass(frozen=True)
class Region:
    bounds: tuple[Bound, ...]

    def contains(self, fields: dict[str, Any]) -> bool:
        return all(b.holds(fields) for b in self.bounds)

    def describe(self) -> str:
        return ", ".join(b.describe() for b in self.bounds)


def parse_region(value: Any) -> Region:
    """`{coordinate: {at_least: N, at_most: M}}` (either limit, or both); ValueError naming the
    key otherwise."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"region must map coordinates ({', '.join(COORDINATES)}) to "
                         "{at_least: N} and/or {at_most: M}")
    bounds = []
    for name, limits in value.items():
        if name not in COORDINATES:
            raise ValueError(f"region: unknown coordinate {name!r}; choose from "
                             f"{', '.join(COORDINATES)}")
        if not isinstance(limits, dict) or not limits or set(limits) - set(LIMITS):
            raise ValueError(f"region.{name}: give at_least and/or at_most")
        bounds.append(Bound(name, *(None if limits.get(k) is None else parse_number(limits[k])
                                    for k in LIMITS)))
    return Region(tuple(bounds))
