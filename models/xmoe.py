"""XMoE (Yang et al., Findings of ACL 2024, arXiv 2403.18926): many small experts and a
threshold router.

Symbols: N tokens, E' = E * g small experts of width d_ff / g, t threshold, C capacity,
K the most experts any token of the batch chose. Per token, p = softmax(s * router(x)) over all
E' (s: --router-scale), sorted descending:

    rank j is chosen while sum_{i<j} p_(i) < t     (the smallest prefix whose mass reaches t)
    y = sum_{kept i} p_i f_i(x)                     (raw probabilities, not renormalised)

Capacity, as XMoE's DeepSpeed gate: C = max(ceil(N / E' * capacity_factor), min_capacity).
The gate gives rank j the importance K - j and each expert keeps its C most important pairs, so
first choices win: pairs queue rank by rank (every token's first choice, then every second
choice, ...), in token order within a rank, and pairs queued past C are dropped.
capacity_factor None: dropless.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from meo_profile.models.experts import ExpertBank
from meo_profile.models.layers import SparseLayer, dispatch_loop, run_sorted
from meo_profile.models.phases import phase
from meo_profile.models.routing import Router, Routing, threshold_routing
from torch import nn

MIN_CAPACITY = 4  # the DeepSpeed MoE layer's default, which XMoE's code keeps


class Plan(NamedTuple):
    """What the router decided, after capacity, for an implementation to execute."""

    routing: Routing  # (N, K) kept pairs; dropped pairs and empty slots: index -1, weight 0
    position: torch.Tensor  # (N, K) each pair's place in its expert's queue
    capacity: int | None  # C; None when dropless


@dataclass
class RoutingStats:
    """One forward's routing, kept as tensors (no host sync while timing)."""

    chosen: torch.Tensor  # (N,) experts the threshold router chose per token
    dropped_pairs: torch.Tensor  # () (token, expert) pairs past capacity


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float | None,
                    min_capacity: int = MIN_CAPACITY) -> int | None:
    """C = max(ceil(N / E' * capacity_factor), min_capacity); None (no cap) when dropless."""
    if capacity_factor is None:
        return None
    return max(math.ceil(num_tokens / num_experts * capacity_factor), min_capacity)


def queue_positions(index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Each pair's place in its expert's queue, pairs queued rank by rank and in token order
    within a rank. index (N, K), -1 for empty slots (queued apart, never used) -> (N, K)."""
    N, K = index.shape
    rank_major = index.t().reshape(-1)  # (K*N,) every first choice, then every second, ...
    expert = torch.where(rank_major < 0, num_experts, rank_major)  # empty slots: sentinel E'
    expert_sorted, order = expert.sort(stable=True)  # stable: queue order kept per expert
    queue_start = torch.searchsorted(expert_sorted, expert_sorted)  # (K*N,) first row of each queue
    position_sorted = torch.arange(K * N, device=index.device) - queue_start
    position = torch.empty_like(position_sorted).scatter_(0, order, position_sorted)
    return position.view(K, N).t()  # (K*N,) -> (N, K)


# ---------------------------------------------------------------------------- execution
def xmoe_loop(bank: ExpertBank, x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The per-expert loop; it matches only kept pairs (index -1 matches no expert)."""
    return dispatch_loop(bank, x, plan.routing)


def xmoe_grouped(bank: ExpertBank, x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Only the kept pairs, compacted, sorted by expert, one grouped matmul per matrix."""
    index, weights = plan.routing
    with phase("dispatch"):
        token, slot = (index >= 0).nonzero(as_tuple=True)  # (P,) each: the host sync for P
        expert_sorted, order = index[token, slot].sort(stable=True)  # (P,), (P,)
        token_of_row, gates = token[order], weights[token, slot][order]  # (P,), (P,)
    return run_sorted(bank, x, token_of_row, expert_sorted, gates)


def xmoe_padded(bank: ExpertBank, x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Every expert runs C rows, used or not, as XMoE's code does: the expert matmuls cost
    E' * C rows whatever the routing (dropless: C is the fullest expert's load). Dispatch and
    combine are a scatter and a gather here; the paper's code does them as einsums over an
    (N, E', C) one-hot mask, whose multiply-adds are not reproduced."""
    index, weights = plan.routing
    (N, K), E, d_in = index.shape, bank.num_experts, x.shape[1]
    kept = index >= 0  # (N, K)
    C = plan.capacity
    if C is None:
        C = int(torch.where(kept, plan.position, -1).max()) + 1  # host sync: the buffer size
    with phase("dispatch"):
        row = torch.where(kept, index * C + plan.position, E * C).reshape(-1)  # (N*K,) spare row E*C
        buffer = x.new_zeros(E * C + 1, d_in)
        # duplicates only ever land in the spare row, which is discarded
        buffer.index_copy_(0, row, x.unsqueeze(1).expand(N, K, d_in).reshape(N * K, d_in))
    with phase("experts"):
        h = bank.forward_stacked(buffer[: E * C].view(E, C, d_in))  # (E', C, d_out)
    with phase("combine"):
        out = h.reshape(E * C, -1)[row.clamp(max=E * C - 1)].view(N, K, -1)  # (N, K, d_out)
        out = torch.where(kept.unsqueeze(-1), out, 0) * weights.to(out.dtype).unsqueeze(-1)
        return out.sum(dim=1)  # (N, d_out)


XMOE_DISPATCH: dict[str, Callable[[ExpertBank, torch.Tensor, Plan], torch.Tensor]] = {
    "grouped": xmoe_grouped, "loop": xmoe_loop, "padded": xmoe_padded,
}


class XMoE(SparseLayer):
    """`--variant xmoe`: threshold routing over small experts, optional cap and capacity.

    After each forward, `last_routing_stats` holds the experts chosen per token and the pairs
    dropped; `routing_summary(model)` reads them over every XMoE layer."""

    def __init__(self, bank: ExpertBank, router: Router, impl: str, threshold: float = 0.9,
                 max_k: int | None = None, capacity_factor: float | None = None,
                 min_capacity: int = MIN_CAPACITY):
        super().__init__(bank, router, impl)
        self.threshold, self.max_k = threshold, max_k
        self.capacity_factor, self.min_capacity = capacity_factor, min_capacity
        self.last_routing_stats: RoutingStats | None = None

    @property
    def knobs(self) -> dict:
        return dict(threshold=self.threshold, max_k=self.max_k,
                    capacity_factor=self.capacity_factor, min_capacity=self.min_capacity)

    def extra_repr(self) -> str:
        return (f"impl={self.impl!r}, E={self.experts.num_experts}, t={self.threshold}, "
                f"max_k={self.max_k}, capacity_factor={self.capacity_factor}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d_in = x.shape
        tokens = x.reshape(B * T, d_in)  # (N, d_in)
        with phase("router"):
            probs = self.router.logits(tokens).softmax(dim=-1, dtype=torch.float32)  # (N, E')
            chosen = threshold_routing(probs, self.threshold, self.max_k)  # (N, K) padded
        with phase("dispatch"):
            plan = self.plan(chosen)
        y = XMOE_DISPATCH[self.impl](self.experts, tokens, plan)  # (N, d_out)
        return y.view(B, T, -1)

    def plan(self, chosen: Routing) -> Plan:
        """Apply capacity to the router's choice and record the routing statistics."""
        index, weights = chosen
        valid = index >= 0  # (N, K)
        position = queue_positions(index, self.experts.num_experts)  # (N, K)
        C = expert_capacity(index.shape[0], self.experts.num_experts, self.capacity_factor,
                            self.min_capacity)
        kept = valid if C is None else valid & (position < C)
        self.last_routing_stats = RoutingStats(chosen=valid.sum(dim=-1),
                                               dropped_pairs=(valid & ~kept).sum())
        routing = self.remember(Routing(torch.where(kept, index, -1), weights * kept))
        return Plan(routing, position, C)

    def params_active(self) -> int | None:
        """Parameters one token reads, on average over the last forward: the router and the
        kept small experts. None before any forward."""
        stats = self.last_routing_stats
        if stats is None:
            return None
        kept = (stats.chosen.sum() - stats.dropped_pairs).item() / stats.chosen.numel()
        router = sum(p.numel() for p in self.router.parameters())
        return router + round(kept * self.experts.expert_numel)


# ------------------------------------------------------------------------- measurement
def routing_summary(model: nn.Module) -> dict[str, float | int]:
    """Experts chosen per token (mean, p90, max) and dropped pairs over every XMoE layer's last
    forward, named as the result record's fields. Each (token, layer) is one sample; p90 is the
    nearest rank (the smallest count that at least 90% of samples do not exceed). Empty when the
    model has no XMoE layer that has run."""
    stats = [m.last_routing_stats for m in model.modules()
             if isinstance(m, XMoE) and m.last_routing_stats is not None]
    if not stats or stats[0].chosen.is_meta:
        return {}
    chosen = torch.cat([s.chosen for s in stats])  # (layers * N,)
    cdf = torch.bincount(chosen).cumsum(dim=0)  # cdf[c]: samples that chose at most c experts
    p90 = torch.searchsorted(cdf, math.ceil(0.9 * chosen.numel()))
    return {
        "experts_per_token_mean": chosen.double().mean().item(),
        "experts_per_token_p90": float(p90),
        "experts_per_token_max": int(chosen.max()),
        "dropped_pairs": int(sum(s.dropped_pairs for s in stats)),
    }
