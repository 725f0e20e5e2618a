"""Compressed experts (He et al. 2025, arXiv 2503.00634): the lowest n_ce of a token's top-k
experts are not run; their learned scaling vectors rescale the inputs of the experts that are.

Symbols: N tokens, E experts, k experts per token, m = k - n_ce main experts, n_ce auxiliary.
Per token, with p = softmax(router(x)) over all E (top-k sorted, not renormalised, as OLMoE's
norm_topk_prob = false):

    main  = top-k[:m],   aux = top-k[m:]
    q_a   = p_a / sum_{a' in aux} p_a'                         (aux weights renormalised)
    e_j   = sum_{a in aux} q_a v_{a,j}                          (one vector per matrix input j)
    y     = sum_{i in main} p_i f_i(x; e)

where f_i(x; e) is expert i with each matrix input scaled: for SwiGLU experts
down(act(gate(x * e1)) * up(x * e3) * e2), for a plain FFN down(act(up(x * e_up)) * e_down),
for a linear expert W (x * e_in) + b. The paper's code stores [3, hidden] per expert and slices
e2 from a hidden-sized vector; here e2 has the expert's width, which Phi-3.5-MoE (width 6400 >
hidden 4096) needs. Vectors start at ones, so a fresh layer is top-m routing with the raw
(unrenormalised) probabilities.
"""

from __future__ import annotations

import torch
from meo_profile.models.experts import ExpertBank, Scales
from meo_profile.models.layers import TOKEN_DISPATCH, SparseLayer, TokenMoE
from meo_profile.models.phases import phase
from meo_profile.models.routing import Router, Routing
from torch import nn

# How the vectors start: the paper's ones, or a trained-like spread around them so that
# fidelity and numerical checks see vectors that actually rescale.
CE_INITS = {
    "ones": nn.init.ones_,
    "random": lambda v: v.normal_(1.0, 0.1),  # 1 + 0.1 N(0, 1)
}


class CompressedVectors(nn.Module):
    """Every expert's scaling vectors, one per matrix input, stored flat: (E, V) with
    V = sum_j parts_j * d_in_j (SwiGLU: 2 d + d_ff; plain FFN: d + d_ff; linear: d_in)."""

    def __init__(self, bank: ExpertBank, init: str = "ones"):
        super().__init__()
        self.shapes = bank.input_shapes()  # [(parts_j, d_in_j)]
        width = sum(parts * d for parts, d in self.shapes)
        self.weight = nn.Parameter(torch.empty(bank.num_experts, width))
        CE_INITS[init](self.weight.data)

    def forward(self, aux: Routing) -> Scales:
        """Per-token input scales [(N, parts_j, d_in_j)] from the auxiliary experts; None when
        there are none (n_ce = 0: the layer is plain top-k MoE)."""
        N, n_ce = aux.top_k_index.shape
        if n_ce == 0:
            return None
        p = aux.top_k_weights.to(self.weight.dtype)
        q = p / p.sum(dim=-1, keepdim=True)  # (N, n_ce) q_a = p_a / sum_aux p
        picked = self.weight[aux.top_k_index]  # (N, n_ce, V)
        e = torch.bmm(q.unsqueeze(1), picked).squeeze(1)  # (N, 1, n_ce) x (N, n_ce, V) -> (N, V)
        sizes = [parts * d for parts, d in self.shapes]
        return [chunk.view(N, parts, d)  # (N, parts_j, d_in_j)
                for chunk, (parts, d) in zip(e.split(sizes, dim=-1), self.shapes, strict=True)]


def split_routing(routing: Routing, main: int) -> tuple[Routing, Routing]:
    """The first `main` of a sorted top-k run in full; the rest are compressed."""
    index, weights = routing
    return Routing(index[:, :main], weights[:, :main]), Routing(index[:, main:], weights[:, main:])


class CompressedExperts(SparseLayer):
    """`--variant ce`: top-(k - n_ce) experts in full, the lowest n_ce as scaling vectors.

    The router must give softmax-then-top-k probabilities (`gates="softmax_topk"`): the main
    experts' weights are those raw probabilities and the auxiliary ones are renormalised here.
    """

    def __init__(self, bank: ExpertBank, router: Router, impl: str, n_ce: int,
                 init: str = "ones", vectors: CompressedVectors | None = None):
        super().__init__(bank, router, impl)
        if router.gates != "softmax_topk":
            raise ValueError(f"compressed experts route softmax-then-top-k, got gates={router.gates!r}")
        if not 0 <= n_ce < router.top_k:
            raise ValueError(f"n_ce={n_ce} must be in 0..{router.top_k - 1}")
        self.n_ce = n_ce
        self.vectors = vectors if vectors is not None else CompressedVectors(bank, init)
        self.last_aux_index: torch.Tensor | None = None  # the compressed experts last chosen

    @property
    def main_k(self) -> int:
        return self.router.top_k - self.n_ce

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_ce={self.n_ce}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d_in = x.shape
        tokens = x.reshape(B * T, d_in)  # (N, d_in)
        with phase("router"):
            main, aux = split_routing(self.router(tokens), self.main_k)  # (N, m), (N, n_ce)
            self.remember(main)  # the experts that run in full
            self.last_aux_index = aux.top_k_index  # whose vectors are read (the roofline's)
        with phase("compress"):
            scales = self.vectors(aux)  # [(N, parts_j, d_in_j)] e1, e3, e2 for SwiGLU
        y = TOKEN_DISPATCH[self.impl](self.experts, tokens, main, scales)  # (N, d_out)
        return y.view(B, T, -1)

    def params_active(self) -> int:
        """Parameters one token reads: the router, m whole experts and n_ce vectors."""
        return (sum(p.numel() for p in self.router.parameters())
                + self.main_k * self.experts.expert_numel + self.n_ce * self.vectors.weight.shape[1])


# ---------------------------------------------------------------------------------- fidelity
def full_top_k(layer: CompressedExperts) -> TokenMoE:
    """The same experts and router with all k experts run in full: the fidelity reference."""
    return TokenMoE(layer.experts, layer.router, layer.impl)


@torch.no_grad()
def block_errors(layer: CompressedExperts, x: torch.Tensor,
                 y: torch.Tensor | None = None) -> tuple[float, float]:
    """(||y - y_full||^2, ||y_full||^2) of one block on input x (y: its output, if already
    computed), summed in float64."""
    y = (layer(x) if y is None else y).double()
    y_full = full_top_k(layer)(x).double()
    return (y - y_full).pow(2).sum().item(), y_full.pow(2).sum().item()


def rel_l2_error(layer: CompressedExperts, x: torch.Tensor) -> float:
    """||y - y_full|| / ||y_full||: the block's output against full top-k on the same router."""
    err, ref = block_errors(layer, x)
    return (err / ref) ** 0.5 if ref > 0 else err**0.5


@torch.no_grad()
def model_rel_l2_error(model: nn.Module, *inputs: torch.Tensor) -> float | None:
    """The fidelity figure of a whole model: every compressed block compared with full top-k on
    the input that block saw in one forward of `model`, errors pooled over blocks:
    sqrt(sum_l ||y_l - y_full_l||^2 / sum_l ||y_full_l||^2). None when the model has no `ce`
    layer. (Each block sees the compressed model's own activations, so errors do not compound.)"""
    seen: list[tuple[CompressedExperts, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out)))
             for m in model.modules() if isinstance(m, CompressedExperts)]
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        return None
    sums = [block_errors(layer, x, y) for layer, x, y in seen]
    err, ref = sum(s[0] for s in sums), sum(s[1] for s in sums)
    return (err / ref) ** 0.5 if ref > 0 else err**0.5
