"""Pick a counter by name: `fvcore` (a traced forward) or `analytic` (the closed form); or
`both`, the traced count held against the closed form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from meo_profile.core.units import human_bytes
from meo_profile.measure import analytic
from meo_profile.measure.counts import Counts
from meo_profile.measure.fvcore_count import count_fvcore
from meo_profile.measure.preflight import DoesNotFit
from meo_profile.models import Spec, SpecError

# name -> (spec, memory limit in bytes or None) -> Counts; the limit bounds a traced count that
# needs real tensors (see count_fvcore); the closed form needs no memory.
COUNTERS: dict[str, Callable[[Spec, int | None], Counts]] = {
    "fvcore": count_fvcore,
    "analytic": lambda spec, max_memory_bytes=None: analytic.count(spec),
}
SOURCES = (*COUNTERS, "both")


def count(spec: Spec, source: str = "fvcore", max_memory_bytes: int | None = None,
          built: tuple[nn.Module, tuple[torch.Tensor, ...]] | None = None) -> Counts:
    """Count with `source`; a traced count that would need more memory than the machine has
    (data-dependent implementations must run on real weights) falls back to the closed form,
    which tests prove equal, and the record says `analytic`. Without a closed form (XMoE,
    whose cost depends on where its router sends tokens) that is bad input: scale down.
    `built`: the spec's model and inputs, already on their device, for a traced count that
    needs real tensors (see count_fvcore)."""
    try:
        if source == "fvcore":
            return count_fvcore(spec, max_memory_bytes, built)
        return COUNTERS[source](spec, max_memory_bytes)
    except DoesNotFit as e:
        try:
            counts = analytic.count(spec)
        except SpecError:  # no closed form either (XMoE): the memory is what stops the count
            raise SpecError("variant", spec.variant, "its count depends on routing, which needs a "
                            f"forward on real weights: about {human_bytes(e.need_bytes)} here, "
                            f"above the {human_bytes(e.limit_bytes)} limit; scale the host down "
                            "(--layers, --d-model, --d-ff) or raise --max-memory") from None
        counts.note = (f"fvcore would trace real weights (about {human_bytes(e.need_bytes)}, "
                       f"above the {human_bytes(e.limit_bytes)} limit); closed form used")
        return counts


def disagreements(a: Counts, b: Counts) -> list[str]:
    """What differs between two counts of one configuration, one line each (empty: agree)."""
    lines = []
    for name in ("macs", "params_total", "params_active"):
        if getattr(a, name) != getattr(b, name):
            lines.append(f"{name}: {a.source} {getattr(a, name):,} != {b.source} {getattr(b, name):,}")
    for part in sorted(set(a.macs_by_part) | set(b.macs_by_part)):
        x, y = a.macs_by_part.get(part, 0), b.macs_by_part.get(part, 0)
        if x != y:
            lines.append(f"macs[{part}]: {a.source} {x:,} != {b.source} {y:,}")
    return lines


@dataclass(frozen=True)
class CrossCheck:
    """The closed form beside a traced count (`--source both`), and where they differ."""

    analytic: Counts
    differences: list[str]

    @property
    def agree(self) -> bool:
        return not self.differences

    def record_fields(self) -> dict[str, Any]:
        return {"macs_analytic": self.analytic.macs, "sources_agree": self.agree}


def cross_check(counts: Counts, spec: Spec) -> CrossCheck:
    other = count(spec, "analytic")
    return CrossCheck(other, disagreements(counts, other))
