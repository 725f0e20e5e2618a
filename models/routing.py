"""Routers: which experts an input goes to, and with what weight.

Two gate conventions appear in the seed papers' code:
- `topk_softmax` (MEO): logits -> top-k -> softmax over the k logits, so the gates sum to 1.
- `softmax_topk` (OLMoE, compressed experts): softmax over all E -> top-k, not renormalised.
  At k = E it is SMEAR's and Lory's softmax over all E experts (sorted, so still top-k's form).
Inference profiling adds no router noise (the noise is a training-time exploration device).

`GATES` evaluates a convention at experts chosen otherwise (`--routing`, models/imposed.py):
the router still computes its logits, only which experts are chosen changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn


class Routing(NamedTuple):
    top_k_index: torch.Tensor  # (N, k) int64, sorted by descending weight
    top_k_weights: torch.Tensor  # (N, k) gate of each chosen expert


def _renormalised(gates: torch.Tensor) -> torch.Tensor:
    return gates / gates.sum(dim=-1, keepdim=True)


def _softmax_at(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1, dtype=torch.float32).gather(1, index).to(logits.dtype)


def _sigmoid_at(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid().gather(1, index)


# convention -> (logits (N, E), chosen experts (N, k)) -> their gates (N, k); the conventions of
# models/discover.py, where a native host's router is named (a `*s` suffix scales them by s)
GATES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "topk_softmax": lambda logits, index: logits.gather(1, index).softmax(dim=-1),
    "softmax_topk": _softmax_at,
    "softmax_topk_renorm": lambda logits, index: _renormalised(_softmax_at(logits, index)),
    "sigmoid_topk": _sigmoid_at,
    "sigmoid_topk_renorm": lambda logits, index: _renormalised(_sigmoid_at(logits, index)),
}


def ranked(index: torch.Tensor, gates: torch.Tensor) -> Routing:
    """Chosen experts and their gates, sorted by descending gate as a router's top-k returns
    them (compressed experts run the first k - n_ce in full). (N, k) each."""
    gates, order = gates.sort(dim=-1, descending=True)
    return Routing(index.gather(1, order), gates)


class Router(nn.Module):
    """A linear gate `logits = scale * (h @ w_gate)`, then top-k under a gate convention.

    The router input is whatever the layer routes on: one row per token (token level), the
    mean token of each sequence (sequence level) or of each segment (Lory); the router itself
    does not know which. `norm` and `bias` give SMEAR's router (r-three/smear, `Router`): a
    LayerNorm on the routing input, then a linear with bias: scale * (LN(h) @ w_gate + b).
    """

    def __init__(self, d_in: int, num_experts: int, top_k: int, *, scale: float = 1.0,
                 gates: str = "topk_softmax", norm: bool = False, bias: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(d_in) if norm else None
        self.w_gate = nn.Linear(d_in, num_experts, bias=bias)
        self.top_k, self.scale, self.gates = top_k, scale, gates
        # The choice `--routing` imposes (models/imposed.ImposedRouting), or None: the router's
        # own. A plain attribute: it holds no parameter and no state to save.
        self.imposed: Any = None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            h = self.norm(h)
        return self.w_gate(h) * self.scale  # (N, E)

    def forward(self, h: torch.Tensor) -> Routing:
        logits = self.logits(h)
        if self.imposed is None:
            return self.top_k_of(logits)
        own = None if self.imposed.drawn else self.top_k_of(logits).top_k_index
        index = self.imposed.choice(h.shape[0], own)  # (N, k), drawn before any timing
        return ranked(index, GATES[self.gates](logits, index))

    def top_k_of(self, logits: torch.Tensor) -> Routing:
        """The router's own choice under its gate convention. (N, E) -> (N, k) each."""
        if self.gates == "topk_softmax":
            top_logits, index = logits.topk(self.top_k, dim=-1)  # sorted, descending
            return Routing(index, top_logits.softmax(dim=-1))
        probs = logits.softmax(dim=-1, dtype=torch.float32).to(logits.dtype)
        top_probs, index = probs.topk(self.top_k, dim=-1)
        return Routing(index, top_probs)


def threshold_routing(probs: torch.Tensor, threshold: float, max_k: int | None = None) -> Routing:
    """XMoE's router: per token, the smallest prefix of experts (by probability) whose mass
    reaches `threshold`. Returns padded (N, K) tensors where K is the largest count in the batch;
    padding slots carry weight 0 and index -1. Weights are the raw probabilities (no renorm).
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # (N, E)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the experts ranked above
    chosen = mass_before < threshold  # rank j is taken while the mass so far is short of t
    if max_k is not None:
        chosen[:, max_k:] = False
    width = int(chosen.sum(dim=-1).max())  # one host sync: the padded width of this batch
    chosen, order, sorted_probs = chosen[:, :width], order[:, :width], sorted_probs[:, :width]
    index = torch.where(chosen, order, torch.full_like(order, -1))
    return Routing(index, sorted_probs * chosen)
