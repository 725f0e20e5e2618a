"""SMEAR and Lory: MEO's merge over all E experts, once per sequence or once per segment.

Symbols: B batch, L sequence length, T segment length, S = L / T segments per sequence (1 when
T >= L), E experts, P one expert's weights. Both route with SMEAR's router (models/routing.py:
a LayerNorm on the routing input, a linear with bias, a softmax over all E, so k = E) and run as
MEO does (models/layers.py `MergedExperts`): the same merge kernels, then one matmul per token.

| variant | merges all E experts       | routed on                                            | merge MACs |
|---------|----------------------------|------------------------------------------------------|------------|
| smear   | once per sequence          | its mean token                                       | B·E·P      |
| lory    | once per segment of T      | the previous segment's mean token (the first: its own) | B·S·E·P  |

SMEAR (Muqeeth, Liu, Raffel, TMLR 2024; r-three/smear, `parameter_averaging_routing`):
W_b = sum_e softmax(r(mean_t x_bt))_e W_e, merged as the code does, by the gate matrix
(`dense`). It is `meo` at k = E with a softmax over all E (what `verify` checks).

Lory (Zhong, Xia, Chen, Lewis, COLM 2024): causal segment routing. Segment i of a sequence is
merged with the weights its predecessor's mean token gives, so no token's expert depends on a
later token; the first segment routes on itself. Each merge serves T tokens: the merge costs
E/T of an expert per token. This forward is that segment routing, as Lory runs a sequence it
reads in parallel (training, prefill); the paper's inference shortcut, one routing decision
from the prompt reused while generating, is a merge made once per sequence and reused at decode
(`--workload decode|generate:N --merge-reuse sequence`, models/decode.py).
"""

from __future__ import annotations

from typing import Any

import torch
from meo_profile.models.experts import ExpertBank
from meo_profile.models.layers import MergedExperts
from meo_profile.models.phases import phase
from meo_profile.models.routing import Router, Routing

LORY_SEGMENT_LEN = 256  # T in the paper's pre-training runs


def segments_per_sequence(seq_len: int, segment_len: int) -> int:
    """S: a sequence splits into L / T segments (T divides L), or is one segment when T >= L."""
    return max(1, seq_len // segment_len)


def merge_groups(spec: Any) -> int:
    """How many merged experts one MoE layer makes per forward: one per sequence (SMEAR, MEO),
    one per segment (Lory)."""
    if spec.segment_len is None:
        return spec.batch_size
    return spec.batch_size * segments_per_sequence(spec.seq_len, spec.segment_len)


class SegmentMerged(MergedExperts):
    """Lory (`--variant lory`): every segment of T tokens merges all E experts with the routing
    of the segment before it, then runs its T tokens through that one merged expert."""

    def __init__(self, bank: ExpertBank, router: Router, impl: str, segment_len: int):
        super().__init__(bank, router, impl)
        self.segment_len = segment_len

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, T={self.segment_len}"

    def segments(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, d_in) -> (B·S, T', d_in) with T' = min(T, L): a sequence's segments in order."""
        B, L, d_in = x.shape
        T = min(self.segment_len, L)
        return x.reshape(B * segments_per_sequence(L, T), T, d_in)

    def route_segments(self, segments: torch.Tensor, batch_size: int) -> Routing:
        """Causal segment routing: segment i on segment i-1's mean token, the first on its own.
        segments (B·S, T, d_in) -> routing (B·S, E), one row per segment."""
        with phase("router"):
            means = segments.mean(dim=1).view(batch_size, -1, segments.shape[-1])  # (B, S, d_in)
            routed_on = torch.cat([means[:, :1], means[:, :-1]], dim=1)  # (B, S, d_in), shifted
            return self.router(routed_on.flatten(0, 1))  # (B·S, E) each

    def whole(self, x: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, Any]:
        """The segment-routed forward (see the class doc), and with `keep` the merged expert of
        the segment that follows the prompt, routed on its last segment's mean token: what a
        prefill over the longer sequence would serve the next tokens with, made once (the
        paper's inference: one routing decision from the prompt, kept while generating)."""
        B, L, _ = x.shape
        segments = self.segments(x)  # (B·S, T, d_in)
        routing = self.remember(self.route_segments(segments, B))
        with phase("merge"):
            merged = self.merger(routing)  # one merged expert per segment
        with phase("experts"):
            out = self.experts.forward_merged(segments, merged).view(B, L, -1)  # (B, L, d_out)
        if not keep:
            return out, None
        with phase("router"):
            last = segments.view(B, -1, *segments.shape[1:])[:, -1].mean(dim=1)  # (B, d_in)
        return out, self.choose(last)
