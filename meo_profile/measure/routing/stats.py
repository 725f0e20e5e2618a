"""Statistics of a routing: how evenly, how skewed and how locally the experts were chosen.

Conventions: a routing is an index tensor of chosen experts, (sequences B, tokens T, k), index
-1 an empty slot (XMoE's padding) that counts for nothing; a token-level layer's last choice
(B·T, k) is read as (B, T, k), a sequence-level one's (B, k) as (B, 1, k). E experts.

- load: (token, expert) pairs per expert; `load_max_over_mean` = the busiest expert's load over
  the mean load (pairs / E): 1 when perfectly even, E/k when every input picks the same k;
- `load_cv`: the loads' coefficient of variation (population standard deviation / mean);
- `zipf_s`: the exponent s of load ∝ rank^-s fitted by least squares on log load against log
  rank over the experts that were chosen at all (None with fewer than two);
- distinct experts per sequence, beside what independent tokens with the same popularity would
  give: sum_e 1 - (1 - q_e)^T, q_e = load_e / (B·T) the chance a token picks e;
- `locality`: the share of consecutive token pairs of a sequence that have an expert in common;
  `same_experts`: the share that chose the very same k.

`routing_fields` gives a latency record its routing statistics from the forward that ran;
`trace_stats` gives `meo-profile routing stats` its table, one row per layer of a trace.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from meo_profile.core.errors import BadInput
from meo_profile.models import Spec
from meo_profile.models.imposed import routed_modules
from meo_profile.models.routing_trace import RoutingTrace, TraceError, load_trace


def chosen_mask(index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(B, T, k) experts -> (B, T, E) bool: which experts each token chose (-1: none)."""
    slots = torch.where(index < 0, num_experts, index)  # an empty slot lands in a spare column
    mask = torch.zeros(*index.shape[:-1], num_experts + 1, dtype=torch.bool, device=index.device)
    return mask.scatter_(-1, slots, True)[..., :num_experts]


def expert_loads(mask: torch.Tensor) -> torch.Tensor:
    """(B, T, E) chosen -> (E,) pairs per expert, float64."""
    return mask.reshape(-1, mask.shape[-1]).sum(dim=0, dtype=torch.float64)


def load_max_over_mean(loads: torch.Tensor) -> float:
    mean = loads.mean().item()
    return loads.max().item() / mean if mean > 0 else math.nan


def load_cv(loads: torch.Tensor) -> float:
    mean = loads.mean().item()
    return loads.std(unbiased=False).item() / mean if mean > 0 else math.nan


def zipf_exponent(loads: torch.Tensor) -> float | None:
    """s of load ∝ rank^-s (see the module doc); None with fewer than two chosen experts."""
    chosen = loads[loads > 0].sort(descending=True).values
    if chosen.numel() < 2:
        return None
    x = torch.arange(1, chosen.numel() + 1, dtype=torch.float64).log()
    y = chosen.log()
    x, y = x - x.mean(), y - y.mean()
    return -(x * y).sum().item() / (x * x).sum().item()


def experts_per_sequence(mask: torch.Tensor) -> torch.Tensor:
    """(B, T, E) chosen -> (B,) distinct experts each sequence chose."""
    return mask.any(dim=1).sum(dim=-1)


def independent_distinct(loads: torch.Tensor, sequences: int, tokens: int) -> float:
    """Distinct experts per sequence if its T tokens chose independently, with the popularity
    the loads show: sum_e 1 - (1 - q_e)^T."""
    q = loads / (sequences * tokens)  # (E,) chance a token picks expert e
    return (1 - (1 - q).clamp(min=0) ** tokens).sum().item()


def neighbours(mask: torch.Tensor) -> tuple[float, float]:
    """(share of consecutive token pairs with an expert in common, share with the same k)."""
    if mask.shape[1] < 2:
        return math.nan, math.nan
    before, after = mask[:, :-1], mask[:, 1:]  # (B, T-1, E) each
    shared = (before & after).any(dim=-1).double().mean().item()
    same = (before == after).all(dim=-1).double().mean().item()
    return shared, same


# ------------------------------------------------------------------------------ records
def as_sequences(index: torch.Tensor, sequences: int) -> torch.Tensor | None:
    """A layer's last choice (rows, k), rows sequence-major, as (B, rows/B, k); None when the
    rows do not split evenly into the B sequences."""
    rows, k = index.shape
    return index.view(sequences, rows // sequences, k) if rows % sequences == 0 else None


def _experts(module: nn.Module) -> int:
    return module.num_experts if hasattr(module, "num_experts") else module.experts.num_experts


@torch.no_grad()
def routing_fields(model: nn.Module, spec: Spec) -> dict[str, float]:
    """The record's routing statistics from each MoE layer's last forward, averaged over the
    layers: `experts_touched_mean` (distinct experts a layer ran), `expert_load_max_over_mean`
    and `experts_per_sequence_mean`. {} when no layer has run on a real device. Host syncs:
    call it after timing."""
    touched, peak, per_sequence = [], [], []
    for module in routed_modules(model):
        index = module.last_top_k_index
        if index is None or index.is_meta:
            continue
        by_sequence = as_sequences(index, spec.batch_size)
        if by_sequence is None:
            continue
        mask = chosen_mask(by_sequence, _experts(module))  # (B, T, E)
        loads = expert_loads(mask)
        touched.append(int((loads > 0).sum()))
        peak.append(load_max_over_mean(loads))
        per_sequence.append(experts_per_sequence(mask).double().mean().item())
    if not touched:
        return {}
    return {"experts_touched_mean": sum(touched) / len(touched),
            "expert_load_max_over_mean": sum(peak) / len(peak),
            "experts_per_sequence_mean": sum(per_sequence) / len(per_sequence)}


# ------------------------------------------------------------------------------- traces
@dataclass(frozen=True)
class LayerStats:
    """One layer of a routing trace (see the module doc for each statistic)."""

    layer: str
    load_max_over_mean: float
    load_cv: float
    zipf_s: float | None
    experts_per_sequence: float
    independent_expectation: float
    locality: float
    same_experts: float


def layer_stats(name: str, index: torch.Tensor, num_experts: int) -> LayerStats:
    """Statistics of one layer's choices, (B, T, k)."""
    mask = chosen_mask(index.long(), num_experts)
    loads = expert_loads(mask)
    B, T = index.shape[:2]
    shared, same = neighbours(mask)
    return LayerStats(name, load_max_over_mean(loads), load_cv(loads), zipf_exponent(loads),
                      experts_per_sequence(mask).double().mean().item(),
                      independent_distinct(loads, B, T), shared, same)


def open_trace(path: str) -> RoutingTrace:
    """A trace file for `routing stats` (BadInput, one line, when it is not one)."""
    try:
        return load_trace(path)
    except TraceError as e:
        raise BadInput(f"TRACE {e}") from None


def trace_stats(trace: RoutingTrace) -> list[LayerStats]:
    h = trace.header
    return [layer_stats(name, torch.from_numpy(trace.top_k_index[i]), h.num_experts)
            for i, name in enumerate(h.layer_names)]


def trace_summary(trace: RoutingTrace, path: str) -> dict[str, Any]:
    """What a record says of the trace it replayed: its header and its statistics averaged
    over layers (the report's table of replayed traces)."""
    h = trace.header
    rows = [asdict(s) for s in trace_stats(trace)]
    means = {key: _mean([r[key] for r in rows]) for key in rows[0] if key != "layer"} if rows else {}
    return {"path": path, "model": h.model, "num_experts": h.num_experts, "top_k": h.top_k,
            "layers": h.layers, "sequences": h.sequences, "tokens": h.tokens, **means}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None
