"""MoE layers: one expert bank, one router, and a way of combining them.

Symbols: B batch, T sequence length, N = B*T tokens, E experts, k experts per input,
S = N*k (token, expert) pairs. Every layer maps (B, T, d_in) -> (B, T, d_out).

| layer         | routes on           | computes                                             |
|---------------|---------------------|------------------------------------------------------|
| TokenMoE      | every token         | y_t = sum_i g_ti f_{e_ti}(x_t)                        |
| SequenceMoE   | mean token of a seq | y_t = sum_i g_bi f_{e_bi}(x_t)                        |
| MergedExperts | mean token of a seq | W_b = sum_i g_bi W_{e_bi}; y_t = W_b x_t + b_b (MEO)  |

Layers that route each sequence as a whole are `SequenceRouted`: a forward is `prepare` (MEO's
token block; nothing for the others), `choose` on the sequence's mean token (the routing, and
for a merging variant the merged expert) and `through` (every token through that choice);
`whole` is the forward over whole sequences, which also returns the choice. A merging variant
added later is one more `SequenceRouted` with these methods, marked `merges=True` in the
variants table: decoding (models/decode.py) then keeps a running mean per sequence, or its
prompt's choice (`--merge-reuse sequence`), with no case of its own.
"""

from __future__ import annotations

import torch
from meo_profile.models.experts import ExpertBank, Scales, group_offsets
from meo_profile.models.hf_experts import HF_IMPLS, dispatch_hf
from meo_profile.models.phases import phase
from meo_profile.models.routing import Router, Routing
from torch import nn


class SparseLayer(nn.Module):
    """Base: an expert bank, a router over its input, and the implementation name that runs."""

    def __init__(self, bank: ExpertBank, router: Router, impl: str):
        super().__init__()
        self.experts, self.router, self.impl = bank, router, impl
        # The experts the last forward ran in full, as the router chose them: kept as the
        # tensor it already is (no copy, no host sync while timing), read after the timed
        # region by `experts_touched` (the roofline counts the weights of distinct experts).
        self.last_top_k_index: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, E={self.experts.num_experts}, k={self.router.top_k}"

    def params_active(self) -> int | None:
        """Parameters one input reads: everything but the (E - k) experts it skips. MEO reads
        the k experts it merges. Variants with other rules override this."""
        idle = (self.experts.num_experts - self.router.top_k) * self.experts.expert_numel
        return sum(p.numel() for p in self.parameters()) - idle

    def remember(self, routing: Routing) -> Routing:
        """Keep the routing's expert index (a reference) for `experts_touched`; returns it."""
        self.last_top_k_index = routing.top_k_index
        return routing


def experts_touched(layer: SparseLayer) -> int | None:
    """Distinct experts the layer's last forward ran (index -1, an empty slot, is none); None
    before any forward or on the meta device. One host sync: call it after timing. (A native
    block, `NativeMoE`, keeps its last choice the same way.)"""
    return distinct_of(layer.last_top_k_index)


def distinct_of(index: torch.Tensor | None) -> int | None:
    """Distinct experts in an index tensor (-1 is none); None for no tensor or a meta one."""
    if index is None or index.is_meta:
        return None
    return int(torch.unique(index[index >= 0]).numel())


# ------------------------------------------------------------------------- token level
def rows_of(scales: Scales, rows: torch.Tensor) -> Scales:
    """Per-token input scales (compressed experts) gathered for the rows an expert runs on."""
    return None if scales is None else [s[rows] for s in scales]


def dispatch_loop(bank: ExpertBank, x: torch.Tensor, routing: Routing,
                  scales: Scales = None) -> torch.Tensor:
    """The MEO paper's per-expert loop: gather each expert's tokens, run it, scatter back.

    x (N, d_in) -> (N, d_out). Index -1 marks an empty slot (XMoE) and matches no expert.
    `scales`: optional per-token input scales [(N, parts_j, d_in_j)] (see ExpertBank).
    """
    y = x.new_zeros(x.shape[0], bank.d_out)
    for e in range(bank.num_experts):
        token, slot = torch.where(routing.top_k_index == e)  # (n_e,), (n_e,)
        if token.numel() == 0:  # the 2025 transformers loop skips idle experts; so do we
            continue
        with phase("experts"):
            out = bank.forward_expert(e, x[token], rows_of(scales, token))  # (n_e, d_out)
        with phase("combine"):
            y.index_add_(0, token, out * routing.top_k_weights[token, slot, None].to(out.dtype))
    return y


def dispatch_grouped(bank: ExpertBank, x: torch.Tensor, routing: Routing,
                     scales: Scales = None) -> torch.Tensor:
    """Pairs sorted by expert, one grouped matmul per matrix, then each token's k rows summed.

    Shape-static (no host sync) when grouped_mm serves this device and dtype, so it also runs
    on the meta device for counting. x (N, d_in) -> (N, d_out). Every slot is computed: routing
    with empty slots (index -1) compacts its pairs first and calls `run_sorted` (see XMoE).
    """
    N, k = routing.top_k_index.shape
    with phase("dispatch"):
        expert_sorted, order = routing.top_k_index.reshape(-1).sort(stable=True)  # (S,), (S,)
        token_of_row = order // k  # (S,) the token each sorted row came from
    h = experts_sorted(bank, x, token_of_row, expert_sorted, scales)  # (S, d_out)
    with phase("combine"):
        # Gated rows back in (token, slot) order, then each token's k rows summed: no atomics
        # (index_add_ with repeated indices adds in any order on CUDA), and the sum of a
        # bfloat16 tensor accumulates in float32. Elementwise work, counted as 0 MACs like
        # every other combine.
        weighted = h * routing.top_k_weights.reshape(-1)[order].to(h.dtype)[:, None]  # (S, d_out)
        pairs = torch.empty_like(weighted).index_copy_(0, order, weighted)  # row t*k + i
        return pairs.view(N, k, -1).sum(dim=1)  # (N, d_out)


def experts_sorted(bank: ExpertBank, x: torch.Tensor, token_of_row: torch.Tensor,
                   expert_sorted: torch.Tensor, scales: Scales = None) -> torch.Tensor:
    """Rows already sorted by expert: gather their tokens, one grouped matmul per matrix.
    x (N, d_in) -> (S, d_out), one row per (token, expert) pair in sorted order."""
    with phase("dispatch"):
        x_sorted = x[token_of_row]  # (S, d_in)
        offsets = group_offsets(expert_sorted, bank.num_experts)  # (E,)
    with phase("experts"):
        return bank.forward_sorted(x_sorted, expert_sorted, offsets, rows_of(scales, token_of_row))


def run_sorted(bank: ExpertBank, x: torch.Tensor, token_of_row: torch.Tensor,
               expert_sorted: torch.Tensor, gates: torch.Tensor, scales: Scales = None) -> torch.Tensor:
    """(token, expert, gate) rows already sorted by expert, any number per token (XMoE's
    compacted pairs): the grouped experts, then the gated rows scatter-added back.
    x (N, d_in) -> (N, d_out)."""
    h = experts_sorted(bank, x, token_of_row, expert_sorted, scales)  # (S, d_out)
    with phase("combine"):
        # index_add_ sums the rows of a token in the order they arrive; the result matches
        # the loop up to round-off.
        weighted = h * gates.to(h.dtype)[:, None]  # (S, d_out)
        return x.new_zeros(x.shape[0], bank.d_out).index_add_(0, token_of_row, weighted)


TOKEN_DISPATCH = {"loop": dispatch_loop, "grouped": dispatch_grouped,
                  **{name: dispatch_hf(name) for name in HF_IMPLS}}


class TokenMoE(SparseLayer):
    """Vanilla top-k MoE with token-level routing (`--variant moe`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d_in = x.shape
        tokens = x.reshape(B * T, d_in)  # (N, d_in)
        with phase("router"):
            routing = self.remember(self.router(tokens))  # (N, k) each
        y = TOKEN_DISPATCH[self.impl](self.experts, tokens, routing)  # (N, d_out)
        return y.view(B, T, -1)


# ---------------------------------------------------------------------- sequence level
class SequenceRouted(SparseLayer):
    """Routes each sequence on the mean of its tokens (padding included, as the MEO code does),
    then runs every token through what its sequence chose. While decoding, `decoding` (a
    models.decode.SequenceState) supplies the running mean or keeps the prompt's choice."""

    decoding = None  # a SequenceState while the layer decodes

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What the layer does to its input before routing (MEO's token block)."""
        return x

    def choose(self, mean: torch.Tensor):
        """(B, d_in) mean tokens -> each sequence's choice, as `through` takes it."""
        raise NotImplementedError

    def through(self, x: torch.Tensor, choice) -> torch.Tensor:
        """(B, T, d_in) tokens through their sequence's choice -> (B, T, d_out)."""
        raise NotImplementedError

    def whole(self, x: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, object]:
        """A forward over whole sequences x (B, T, d_in): the output, and each sequence's choice
        (what a decode step keeps with `--merge-reuse sequence`; a variant may skip making it
        unless `keep`). A variant that routes parts of a sequence apart (Lory's segments)
        overrides this, and says which choice a step keeps."""
        with phase("router"):
            mean = x.mean(dim=1)  # (B, T, d_in) -> (B, d_in)
        choice = self.choose(mean)
        return self.through(x, choice), choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.decoding is not None:
            return self.decoding.run(self, x)
        return self.whole(x)[0]


def seq_grouped(bank: ExpertBank, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Every token of sequence b through the k experts of b: each token takes its sequence's
    routing, then the token-level grouped dispatch (pairs sorted by expert, one grouped matmul
    per matrix). No expert matrix is copied; the tokens are, k times, as at token level."""
    B, T, d_in = x.shape
    per_token = Routing(routing.top_k_index.repeat_interleave(T, dim=0),  # (N, k)
                        routing.top_k_weights.repeat_interleave(T, dim=0))
    return dispatch_grouped(bank, x.reshape(B * T, d_in), per_token).view(B, T, -1)


def seq_loop(bank: ExpertBank, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Per expert, the sequences that chose it: the paper's loop at sequence level."""
    y = x.new_zeros(*x.shape[:2], bank.d_out)
    for e in range(bank.num_experts):
        seq, slot = torch.where(routing.top_k_index == e)  # (n_e,), (n_e,)
        if seq.numel() == 0:
            continue
        with phase("experts"):
            out = bank.forward_expert(e, x[seq])  # (n_e, T, d_out)
        with phase("combine"):
            g = routing.top_k_weights[seq, slot].to(out.dtype)[:, None, None]
            y.index_add_(0, seq, out * g)
    return y


SEQUENCE_DISPATCH = {"grouped": seq_grouped, "loop": seq_loop}


class SequenceMoE(SequenceRouted):
    """Vanilla top-k MoE with sequence-level routing (`--variant moe-seq`): a sequence's
    choice is its routing, (B, k) experts and gates."""

    def choose(self, mean: torch.Tensor) -> Routing:
        with phase("router"):
            return self.remember(self.router(mean))  # (B, k) each

    def through(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        return SEQUENCE_DISPATCH[self.impl](self.experts, x, routing)


# ---------------------------------------------------------------------------------- MEO
class TokenBlock(nn.Module):
    """MEO's token-level block: x + up(ReLU(down(x))), bottleneck d/64, `up` zero-initialised
    so that a fresh block is the identity (the released code's "token-level attention")."""

    def __init__(self, d: int):
        super().__init__()
        self.down = nn.Linear(d, max(1, d // 64))
        self.up = nn.Linear(max(1, d // 64), d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class Merger(nn.Module):
    """Folds each sequence's k experts into one set of matrices (its own module so that FLOP
    breakdowns and traces show the merge apart from the matmuls that use it)."""

    def __init__(self, bank: ExpertBank, how: str):
        super().__init__()
        self.bank, self.how = [bank], how  # a list: the bank is owned (and counted) by the layer

    def forward(self, routing: Routing) -> list[tuple]:
        return self.bank[0].merge(routing.top_k_index, routing.top_k_weights, self.how)


class MergedExperts(SequenceRouted):
    """MEO (`--variant meo`; `meo-token` adds the token block): merge once per sequence, then
    one matmul per token. With linear experts and gates summing to 1 this equals SequenceMoE:
    sum_i g_i (W_i x + b_i) = (sum_i g_i W_i) x + sum_i g_i b_i. A sequence's choice is its
    merged expert: [(W (B, d_out_j, d_in_j), b (B, d_out_j) or None)] per matrix j."""

    def __init__(self, bank: ExpertBank, router: Router, impl: str, token_block: bool = False):
        super().__init__(bank, router, impl)
        self.token_block = TokenBlock(bank.d_in) if token_block else None
        self.merger = Merger(bank, impl)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.token_block is None else self.token_block(x)

    def choose(self, mean: torch.Tensor) -> list[tuple]:
        with phase("router"):
            routing = self.remember(self.router(mean))  # (B, k) each
        with phase("merge"):
            return self.merger(routing)

    def through(self, x: torch.Tensor, merged: list[tuple]) -> torch.Tensor:
        with phase("experts"):
            return self.experts.forward_merged(x, merged)  # (B, T, d_out)
