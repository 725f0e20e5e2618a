"""Soft MoE (Puigcerver, Riquelme, Mustafa, Houlsby, ICLR 2024): tokens merged into slots, each
expert run on its own slots, slots merged back into tokens.

Symbols: B batch, L tokens per sequence, N = B·L, E experts, p slots per expert, S = E·p slots,
d_in / d_out the experts' input and output widths, P one expert's multiply-adds per row.
Per sequence X (L, d_in), with one parameter vector per slot, Φ (d_in, S):

    logits = l2(X) · s·l2(Φ)     (L, S)      the paper's normalisation; s a learned scalar
    D      = softmax_tokens       (L, S)      each slot a convex mix of the sequence's tokens
    X~     = Dᵀ X                 (S, d_in)   the slots
    Y~     = f_e(X~_e), per e     (S, d_out)  expert e on its p slots
    C      = softmax_slots        (L, S)      each token a convex mix of the slots
    Y      = C Y~                 (L, d_out)

MACs per layer: router N·d_in·S, dispatch N·S·d_in, experts B·S·P, combine N·S·d_out. The
experts' cost is set by the slot count, not by the tokens or a top-k; every token's output reads
every slot, so every expert is active for every token (k is stored as E). Dispatch mixes all
the tokens of a sequence, later ones included: like MEO's sequence routing, it reads the whole
sequence at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from meo_profile.models.experts import ExpertBank
from meo_profile.models.layers import SparseLayer
from meo_profile.models.phases import phase
from meo_profile.models.routing import Router
from torch import nn

SLOTS_PER_EXPERT = 1  # p when not given: one slot per expert


class SlotRouter(Router):
    """Soft MoE's Φ: one parameter vector per slot (`w_gate.weight`, (S, d_in)); its logits
    compare each normalised token with each normalised slot vector, times a learned scale that
    starts at --router-scale. Its forward returns the logits (B, L, S): dispatch and combine
    read them, each with its own softmax."""

    def __init__(self, d_in: int, num_experts: int, slots_per_expert: int, scale: float = 1.0):
        super().__init__(d_in, num_experts * slots_per_expert, num_experts, gates="slots")
        self.slots_per_expert = slots_per_expert
        self.learned_scale = nn.Parameter(torch.tensor(float(scale)))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        phi = F.normalize(self.w_gate.weight, dim=-1)  # (S, d_in), each slot's vector unit length
        return F.linear(F.normalize(h, dim=-1), phi) * self.learned_scale  # (..., S)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits(h)


class SlotDispatch(nn.Module):
    """Tokens into slots: D = softmax over tokens, X~ = Dᵀ X. (B, L, S), (B, L, d_in) ->
    (B, S, d_in). A module of its own so that counts and traces show dispatch apart."""

    def forward(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        weights = logits.softmax(dim=1, dtype=torch.float32).to(x.dtype)  # (B, L, S)
        return torch.bmm(weights.transpose(1, 2), x)  # (B, S, L) x (B, L, d_in) -> (B, S, d_in)


class SlotCombine(nn.Module):
    """Slots back into tokens: C = softmax over slots, Y = C Y~. (B, L, S), (B, S, d_out) ->
    (B, L, d_out)."""

    def forward(self, logits: torch.Tensor, y_slots: torch.Tensor) -> torch.Tensor:
        weights = logits.softmax(dim=2, dtype=torch.float32).to(y_slots.dtype)  # (B, L, S)
        return torch.bmm(weights, y_slots)  # (B, L, S) x (B, S, d_out) -> (B, L, d_out)


# ----------------------------------------------------------------- experts on their slots
def slots_stacked(bank: ExpertBank, slots: torch.Tensor) -> torch.Tensor:
    """Every expert's slots of the whole batch side by side, one bmm per matrix.
    slots (B, S, d_in) -> (B, S, d_out); slot s belongs to expert s // p."""
    B, S, d_in = slots.shape
    E = bank.num_experts
    p = S // E
    per_expert = slots.view(B, E, p, d_in).transpose(0, 1).reshape(E, B * p, d_in)  # (E, B·p, d_in)
    out = bank.forward_stacked(per_expert)  # (E, B·p, d_out)
    return out.view(E, B, p, -1).transpose(0, 1).reshape(B, S, -1)


def slots_loop(bank: ExpertBank, slots: torch.Tensor) -> torch.Tensor:
    """Expert by expert, each on its p slots of every sequence (no copy of the slots).
    slots (B, S, d_in) -> (B, S, d_out)."""
    p = slots.shape[1] // bank.num_experts
    return torch.cat([bank.forward_expert(e, slots[:, e * p:(e + 1) * p])  # (B, p, d_out)
                      for e in range(bank.num_experts)], dim=1)


SLOT_EXPERTS = {"stacked": slots_stacked, "loop": slots_loop}


class SoftMoE(SparseLayer):
    """`--variant soft-moe`: dispatch tokens to E·p slots, experts on slots, combine back."""

    def __init__(self, bank: ExpertBank, router: SlotRouter, impl: str):
        super().__init__(bank, router, impl)
        self.dispatch, self.combine = SlotDispatch(), SlotCombine()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.router.slots_per_expert}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with phase("router"):
            logits = self.router(x)  # (B, L, S)
        with phase("dispatch"):
            slots = self.dispatch(logits, x)  # (B, S, d_in)
        with phase("experts"):
            y_slots = SLOT_EXPERTS[self.impl](self.experts, slots)  # (B, S, d_out)
        with phase("combine"):
            return self.combine(logits, y_slots)  # (B, L, d_out)
