"""What a claim can be about: the record fields a claim's `metric` names, the measurement that
fills each, its unit, and parts of the MACs breakdown a quantity may be restricted to.

Units follow the records: `macs` multiply-adds, `flops` = 2 x macs, `*_ms` milliseconds,
`*_bytes` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClaimMetric:
    """A record field a claim can be about, the measurement that produces it, and its unit."""

    needs: str  # the `measure` metric that fills the field: flops, latency or memory
    unit: str
    timed: bool = False  # depends on the machine: compare only records from the same device


CLAIM_METRICS: dict[str, ClaimMetric] = {
    "macs": ClaimMetric("flops", "MACs"),
    "flops": ClaimMetric("flops", "FLOPs"),
    "params_total": ClaimMetric("flops", "params"),
    "params_active": ClaimMetric("flops", "params"),
    "latency_ms_median": ClaimMetric("latency", "ms", timed=True),
    "latency_ms_p20": ClaimMetric("latency", "ms", timed=True),
    "latency_ms_p80": ClaimMetric("latency", "ms", timed=True),
    "tokens_per_s": ClaimMetric("latency", "tokens/s", timed=True),
    "peak_mem_bytes": ClaimMetric("memory", "bytes", timed=True),
    "peak_mem_above_weights_bytes": ClaimMetric("memory", "bytes", timed=True),
    "prefill_ms": ClaimMetric("latency", "ms", timed=True),
    "decode_ms_per_step": ClaimMetric("latency", "ms", timed=True),
    "merged_cache_bytes": ClaimMetric("flops", "bytes"),  # from the structure: any measurement
}
# The parts of `macs_by_part` (see flops.parts_from_modules), checked when a claim is read
# because a misspelt part would silently count as 0.
PARTS = ("attention", "combine", "compress", "dense_ffn", "dispatch", "experts", "ffn", "head",
         "merge", "norm", "other", "router", "shared_experts", "token_block")
MACS_PER = {"macs": 1, "flops": 2}  # metrics that parts can restrict, and their MACs multiple


@dataclass(frozen=True)
class Quantity:
    """A metric, optionally only some parts of the MACs breakdown, or all but some."""

    metric: str
    parts: tuple[str, ...] = ()
    exclude_parts: tuple[str, ...] = ()

    @property
    def spec(self) -> ClaimMetric:
        return CLAIM_METRICS[self.metric]

    def of(self, record: dict[str, Any]) -> float | None:
        if not (self.parts or self.exclude_parts):
            value = record.get(self.metric)
            return None if value is None else float(value)
        by_part, macs = record.get("macs_by_part"), record.get("macs")
        if not by_part or macs is None:
            return None
        if self.parts:
            macs = sum(by_part.get(p, 0) for p in self.parts)
        macs -= sum(by_part.get(p, 0) for p in self.exclude_parts)
        return float(MACS_PER[self.metric] * macs)

    def describe(self) -> str:
        if self.parts:
            return f"{self.metric} of {'+'.join(self.parts)}"
        if self.exclude_parts:
            return f"{self.metric} without {'+'.join(self.exclude_parts)}"
        return self.metric


