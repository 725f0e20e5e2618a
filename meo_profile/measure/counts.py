"""What a counter returns: one forward's multiply-adds by part, and its parameters.

Convention: one multiply-add is one MAC (fvcore's "flop"); `flops` = 2 x `macs`. Every count
names its source (`fvcore` or `analytic`). Produced by the counters (fvcore_count.py,
analytic.py), extended over a stack of blocks by stacks.py, rendered elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counts:
    """A forward's multiply-adds by part, and parameters. Produced by a counter, rendered
    elsewhere."""

    macs: int
    macs_by_part: dict[str, int]
    params_total: int
    params_active: int
    source: str  # "fvcore" or "analytic"
    count_device: str | None = None
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    macs_by_operator: dict[str, int] = field(default_factory=dict)
    macs_by_module: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    routing: dict = field(default_factory=dict)  # XMoE: experts chosen per token, dropped pairs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def record_fields(self) -> dict:
        return {"macs": self.macs, "flops": self.flops, "flops_source": self.source,
                "count_device": self.count_device, "unsupported_ops": dict(self.unsupported_ops),
                "macs_by_part": dict(self.macs_by_part), "params_total": self.params_total,
                "params_active": self.params_active, "count_note": self.note, **self.routing}


ADDED = ("macs_by_part", "macs_by_operator", "macs_by_module", "unsupported_ops")


def combined(calls: list[tuple[Counts, int]]) -> Counts:
    """The counts of a workload of several calls, each (counts of one call, times it is made):
    MACs, their breakdowns and skipped ops add up; parameters are the model's, counted once."""
    first, _ = calls[0]
    maps = {f: {} for f in ADDED}
    for counts, times in calls:
        for f in ADDED:
            for key, n in getattr(counts, f).items():
                maps[f][key] = maps[f].get(key, 0) + times * n
    return Counts(macs=sum(c.macs * n for c, n in calls), params_total=first.params_total,
                  params_active=first.params_active, source=first.source,
                  count_device=first.count_device, note=first.note,
                  routing=calls[-1][0].routing, **{f: dict(sorted(m.items())) for f, m in maps.items()})
