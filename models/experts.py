"""Expert banks: E experts of one shape, stored stacked, and the ways to run them.

An expert is a chain of linears with an activation between them: one linear (the MEO paper's
expert, `dims = [d_in, d_out]`) or a whole FFN (`dims = [d, d_ff, d]`, as in OLMoE/Mixtral).
Matrix j of every expert is one tensor `weights[j]` of shape (E, dims[j+1], dims[j]) with bias
(E, dims[j+1]). Every execution strategy below runs the same chain; they differ only in how the
right rows meet the right matrices:

- `forward_expert`: one expert on a batch of rows (the paper's per-expert loop);
- `forward_sorted`: rows sorted by expert, one grouped matmul per matrix;
- `merge` + `forward_merged`: MEO, the k experts folded into one matrix per sequence first;
- `forward_stacked`: expert e on its own (padded) batch of rows, one bmm per matrix (XMoE's
  capacity buffers).

`forward_expert` and `forward_sorted` also take per-row input `scales` (compressed experts):
scales[j] (rows, parts_j, d_in_j) multiplies the input of matrix j, where a SwiGLU bank's first
matrix has two parts, gate and up, each reading its own scaled copy of the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

Matmul = Callable[[int, torch.Tensor], torch.Tensor]
Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Scales = list[torch.Tensor] | None  # per-row input scale of each matrix (compressed experts)


class ExpertBank(nn.Module):
    def __init__(self, num_experts: int, dims: list[int], act: nn.Module | None = None,
                 bias: bool = True, gated: bool = False):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"an expert needs at least one linear, got dims={dims}")
        self.num_experts, self.dims, self.gated = num_experts, list(dims), gated
        self.act = act if act is not None else nn.Identity()
        outs = [d * (2 if gated and j == 0 else 1) for j, d in enumerate(dims[1:])]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, d_out, d_in)) for d_in, d_out in zip(dims, outs)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, d_out)) for d_out in outs
        ) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); experts independent
        # (not copies of one dense weight) so that equivalence checks between variants can fail.
        for j, w in enumerate(self.weights):
            bound = 1.0 / math.sqrt(self.dims[j])
            nn.init.uniform_(w, -bound, bound)
            if self.biases is not None:
                nn.init.uniform_(self.biases[j], -bound, bound)

    @property
    def d_in(self) -> int:
        return self.dims[0]

    @property
    def d_out(self) -> int:
        return self.dims[-1]

    def bias(self, j: int) -> torch.Tensor | None:
        return None if self.biases is None else self.biases[j]

    @property
    def expert_numel(self) -> int:
        """Parameters of one expert (all its matrices and biases)."""
        return sum(p[0].numel() for p in [*self.weights, *(self.biases or [])])

    def input_shapes(self) -> list[tuple[int, int]]:
        """(parts, width) of each matrix's input, the shape a per-row input scale takes: SwiGLU's
        first matrix has two parts (gate, up) that read the same input but may scale it apart."""
        return [(2 if self.gated and j == 0 else 1, d) for j, d in enumerate(self.dims[:-1])]

    def _chain(self, h: torch.Tensor, matmul: Matmul) -> torch.Tensor:
        """Apply matrix 0, activation, matrix 1, ... with `matmul(j, h)` doing matrix j + bias."""
        last = len(self.weights) - 1
        for j in range(last + 1):
            h = matmul(j, h)
            if j < last:
                if self.gated:  # SwiGLU: act(gate) * up, both halves of matrix 0's output
                    gate, up = h.chunk(2, dim=-1)
                    h = self.act(gate) * up
                else:
                    h = self.act(h)
        return h

    # ------------------------------------------------------------------ execution strategies
    def forward_expert(self, e: int, x: torch.Tensor, scales: Scales = None) -> torch.Tensor:
        """Expert `e` on rows x (..., d_in) -> (..., d_out); `scales` per row, see the module doc."""

        def matmul(j: int, h: torch.Tensor) -> torch.Tensor:
            return scaled_linear(F.linear, h, self.weights[j][e], _at(self.bias(j), e),
                                 None if scales is None else scales[j])

        return self._chain(x, matmul)

    def forward_sorted(self, x_sorted: torch.Tensor, expert_of_row: torch.Tensor,
                       offsets: torch.Tensor, scales: Scales = None) -> torch.Tensor:
        """Rows (S, d_in) sorted by expert; `offsets` (E,) int32 are cumulative group ends."""

        def linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            out = grouped_linear(h, w, offsets)  # (S, d_out_j)
            return out if b is None else out + b[expert_of_row]

        def matmul(j: int, h: torch.Tensor) -> torch.Tensor:
            return scaled_linear(linear, h, self.weights[j], self.bias(j),
                                 None if scales is None else scales[j])

        return self._chain(x_sorted, matmul)

    def forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its own rows x[e]: x (E, C, d_in) -> (E, C, d_out), one bmm per matrix."""

        def matmul(j: int, h: torch.Tensor) -> torch.Tensor:
            out = torch.bmm(h, self.weights[j].transpose(1, 2))  # (E, C, d_in_j) x (E, d_in_j, d_out_j)
            b = self.bias(j)
            return out if b is None else out + b.unsqueeze(1)

        return self._chain(x, matmul)

    def merge(self, index: torch.Tensor, weights: torch.Tensor, how: str) -> list[tuple]:
        """MEO: W_b = sum_i g_bi W_{index_bi}, b_b = sum_i g_bi b_{index_bi}, for every matrix.

        Returns [(W (B, d_out_j, d_in_j), b (B, d_out_j) or None)] per matrix j.
        """
        merge_fn = MERGES[how]
        return [merge_fn(w, b, index, weights)
                for w, b in zip(self.weights, self.biases or [None] * len(self.weights))]

    def forward_merged(self, x: torch.Tensor, merged: list[tuple]) -> torch.Tensor:
        """x (B, T, d_in) through the per-sequence merged expert -> (B, T, d_out)."""

        def matmul(j: int, h: torch.Tensor) -> torch.Tensor:
            w, b = merged[j]  # (B, d_out_j, d_in_j), (B, d_out_j)
            if b is None:
                return torch.bmm(h, w.transpose(1, 2))  # (B, T, d_in_j) x (B, d_in_j, d_out_j)
            # the bias in the matmul's epilogue: one pass over the output instead of two
            return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (B, T, d_out_j)

        return self._chain(x, matmul)


def _at(t: torch.Tensor | None, e: int) -> torch.Tensor | None:
    return None if t is None else t[e]


def scaled_linear(linear: Linear, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                  scale: torch.Tensor | None) -> torch.Tensor:
    """`linear(h, w, b)` with the input scaled per row. scale (rows, parts, d_in) splits the
    matrix's output rows into `parts` blocks (SwiGLU: gate | up), block p reading h * scale[:, p]:
    W_gate (x * e1) and W_up (x * e3) cost the same multiply-adds as the fused W (x)."""
    if scale is None:
        return linear(h, w, b)
    parts = scale.shape[1]
    if parts == 1:
        return linear(h * scale[:, 0], w, b)
    w_parts = w.chunk(parts, dim=-2)  # (..., d_out / parts, d_in) each
    b_parts = (None,) * parts if b is None else b.chunk(parts, dim=-1)
    return torch.cat([linear(h * scale[:, p], w_p, b_p)
                      for p, (w_p, b_p) in enumerate(zip(w_parts, b_parts, strict=True))], dim=-1)


# ---------------------------------------------------------------------------------- merges
def merge_gather(w: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor,
                 gates: torch.Tensor) -> tuple:
    """Read the k selected experts of each sequence: B*k matrices, B*k*P multiply-adds.

    A weighted embedding_bag over the flattened experts sums the k rows of each sequence
    without first copying them out (`w[index]` would write B*k*P elements before reading them
    again: 6x slower on a 2-core CPU at the paper's layer size)."""
    B, _ = index.shape
    E, d_out, d_in = w.shape
    g = gates.to(w.dtype)  # (B, k)
    merged_w = F.embedding_bag(index, w.view(E, d_out * d_in), per_sample_weights=g,
                               mode="sum").view(B, d_out, d_in)  # (B, P) -> (B, d_out, d_in)
    merged_b = None if b is None else F.embedding_bag(index, b, per_sample_weights=g, mode="sum")
    return merged_w, merged_b


def merge_dense(w: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor,
                gates: torch.Tensor) -> tuple:
    """A (B, E) gate matrix, zero off the top-k, times all E experts: reads E matrices once,
    B*E*P multiply-adds. Fewer bytes than `gather` when B*k > E."""
    B, _ = index.shape
    E, d_out, d_in = w.shape
    gate_matrix = w.new_zeros(B, E).scatter(1, index, gates.to(w.dtype))  # (B, E)
    merged_w = (gate_matrix @ w.view(E, d_out * d_in)).view(B, d_out, d_in)
    merged_b = None if b is None else gate_matrix @ b  # (B, d_out)
    return merged_w, merged_b


def merge_fused(w: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor,
                gates: torch.Tensor) -> tuple:
    """One Triton launch reading each sequence's k experts once (CUDA; see
    models/kernels/fused_merge.py): B*k*P multiply-adds, as `gather`."""
    from meo_profile.models.kernels.fused_merge import (
        merge_fused_expert,  # imports triton: only when used
    )

    return merge_fused_expert(w, b, index, gates)


MERGES = {"gather": merge_gather, "dense": merge_dense, "fused": merge_fused}


# ---------------------------------------------------------------------------- grouped matmul
def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x (S, d_in) sorted by expert, weight (E, d_out, d_in), offsets (E,) int32 group ends.

    One `torch.nn.functional.grouped_mm` where this torch supports the device and dtype and the
    rows are 16-byte multiples (its kernels refuse other strides, e.g. d_in = 6 in float32);
    otherwise contiguous per-expert slices with a single host sync for the group sizes.
    """
    row_bytes = (x.shape[-1] * x.element_size(), weight.shape[-2] * weight.element_size())
    if grouped_mm_supported(x.device.type, x.dtype) and all(b % 16 == 0 for b in row_bytes):
        return F.grouped_mm(x, weight.transpose(1, 2), offs=offsets)
    sizes = torch.diff(offsets, prepend=offsets.new_zeros(1)).tolist()  # the one host sync
    return torch.cat([h @ w.T for h, w in zip(x.split(sizes), weight)])


@cache
def grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Probe once per (device, dtype): kernels exist for some pairs only (CUDA needs bf16)."""
    if not hasattr(F, "grouped_mm"):
        return False
    try:
        x = torch.zeros(32, 16, device=device_type, dtype=dtype)
        w = torch.zeros(2, 16, 16, device=device_type, dtype=dtype)
        F.grouped_mm(x, w.transpose(1, 2), offs=torch.tensor([16, 32], dtype=torch.int32,
                                                              device=device_type))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def group_offsets(expert_sorted: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Cumulative group ends (E,) int32 for rows sorted by expert; shape-static (no host sync)."""
    experts = torch.arange(num_experts, device=expert_sorted.device, dtype=expert_sorted.dtype)
    return torch.searchsorted(expert_sorted, experts, right=True).to(torch.int32)
