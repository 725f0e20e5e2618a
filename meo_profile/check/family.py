"""The merging family's equalities, as `meo-profile verify --variant smear|lory|soft-moe` checks.

Each runs on the layers of the spec's own model, on the inputs they saw in one forward:

- smear == meo at k = E with the same router weights (LayerNorm and bias included): a softmax
  over all E equals the softmax over the top E logits, and SMEAR's dense merge over all E equals
  MEO's gather merge of its top E, however they are ordered;
- lory with one segment per sequence (self-routed) == smear;
- lory is causal by segment: changing the tokens of segment i (not the first) leaves the routing
  (so the merged expert) of segments 0..i and the outputs before segment i unchanged, and
  changes segment i+1's routing;
- soft-moe with one slot per expert, as many tokens as slots and Φ's slot vectors the tokens'
  own directions (scale 200: every exp(-200) underflows, so D and C are exactly one-hot):
  token t's output is exactly expert t applied to token t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from meo_profile.check.comparison import Check, compare_outputs
from meo_profile.models import Spec
from meo_profile.models.build import make_sparse_layer, torch_dtype
from meo_profile.models.layers import MergedExperts, SparseLayer
from meo_profile.models.merging import SegmentMerged, segments_per_sequence
from meo_profile.models.routing import Router

Captured = list[tuple[SparseLayer, torch.Tensor]]
ONE_HOT_SCALE = 200.0  # logits 200 apart: exp(-200) is 0 in float32 and bfloat16


@torch.no_grad()
def smear_is_meo_at_all_experts(spec: Spec, captured: Captured, tol: float) -> list[Check]:
    """SMEAR (dense merge, softmax over all E) against MEO with k = E (gather merge, top-E
    softmax) over the same experts and router weights."""
    got, want = [], []
    for layer, x in captured:
        router = layer.router
        meo_router = Router(layer.experts.d_in, router.top_k, router.top_k, scale=router.scale,
                            gates="topk_softmax", norm=router.norm is not None,
                            bias=router.w_gate.bias is not None)
        meo_router.load_state_dict(router.state_dict())
        meo_router.to(device=x.device, dtype=router.w_gate.weight.dtype)
        got.append(layer(x).flatten())
        want.append(MergedExperts(layer.experts, meo_router, "gather")(x).flatten())
    return [compare_outputs("smear == meo at k = E (same router weights)", torch.cat(got),
                            torch.cat(want), tol)]


@torch.no_grad()
def lory_one_segment_is_smear(spec: Spec, captured: Captured, tol: float) -> list[Check]:
    """Lory with its segment as long as the sequence routes each sequence on its own mean."""
    got = [SegmentMerged(layer.experts, layer.router, layer.impl, x.shape[1])(x).flatten()
           for layer, x in captured]
    want = [MergedExperts(layer.experts, layer.router, layer.impl)(x).flatten()
            for layer, x in captured]
    return [compare_outputs("lory, one self-routed segment == smear", torch.cat(got),
                            torch.cat(want), tol)]


def causal_segment_len(seq_len: int, segment_len: int) -> int | None:
    """The spec's T where it gives 3 or more segments, else the longest that does (None when L
    < 3): the check perturbs a segment that has both a predecessor and a successor."""
    if segments_per_sequence(seq_len, segment_len) >= 3:
        return segment_len
    return next((t for t in range(seq_len // 3, 0, -1) if seq_len % t == 0), None)


@torch.no_grad()
def lory_is_causal(spec: Spec, captured: Captured, tol: float) -> list[Check]:
    """Perturb segment i = S - 2 of the first Lory layer's input (see the module doc)."""
    layer, x = captured[0]
    B, L, _ = x.shape
    T = causal_segment_len(L, layer.segment_len)
    name = "lory: a change to segment i reroutes segments i+1 on, nothing before"
    if T is None:
        return [Check(name, float("nan"), float("nan"), tol, skipped=f"L={L}: fewer than 3 segments")]
    lory = SegmentMerged(layer.experts, layer.router, layer.impl, T)
    S, i = L // T, L // T - 2
    changed = x.clone()
    noise = torch.randn(B, T, x.shape[-1], generator=torch.Generator().manual_seed(spec.seed))
    changed[:, i * T:(i + 1) * T] += noise.to(x)

    def gates(v: torch.Tensor) -> torch.Tensor:  # (B, S, E) each segment's weight per expert
        routing = lory.route_segments(lory.segments(v), B)
        by_expert = torch.zeros_like(routing.top_k_weights).scatter(1, routing.top_k_index,
                                                                    routing.top_k_weights)
        return by_expert.view(B, S, -1)

    old, new = gates(x), gates(changed)
    kept = compare_outputs(name, new[:, :i + 1], old[:, :i + 1], tol)  # segments 0..i
    before = compare_outputs(name, lory(changed)[:, :i * T], lory(x)[:, :i * T], tol)
    rerouted = bool((new[:, i + 1] != old[:, i + 1]).any())  # segment i+1 reads segment i
    err = max(kept.max_rel_err, before.max_rel_err) if rerouted else float("inf")
    return [Check(f"{name} (T={T}, S={S}, i={i})", max(kept.max_abs_err, before.max_abs_err),
                  err, tol)]


@torch.no_grad()
def soft_moe_one_hot_dispatch(spec: Spec, captured: Captured, tol: float) -> list[Check]:
    """One Soft MoE linear (d_model -> d_ff), p = 1, E tokens whose directions are Φ's slot
    vectors: y_t == f_t(x_t) (see the module doc)."""
    E, d = spec.num_experts, spec.d_model
    name = "soft-moe, p=1, one-hot dispatch: token t's output == expert t (token t)"
    if d < E:
        return [Check(name, float("nan"), float("nan"), tol,
                      skipped=f"needs d_model >= E for {E} orthogonal token directions")]
    one_slot = spec.replace(host="layer", variant="soft-moe", slots_per_expert=1, layers=None,
                            impl="auto", mode="inference")
    torch.manual_seed(spec.seed)
    layer = make_sparse_layer(one_slot, [d, spec.d_ff], None, bias=True)
    gen = torch.Generator().manual_seed(spec.seed)
    directions, _ = torch.linalg.qr(torch.randn(d, E, generator=gen))  # (d, E), orthonormal
    layer.router.w_gate.weight.copy_(directions.T)  # slot e's vector: token e's direction
    layer.router.learned_scale.fill_(ONE_HOT_SCALE)
    lengths = 1 + torch.rand(E, 1, generator=gen)  # tokens of different norms
    x = (lengths * directions.T).unsqueeze(0)  # (1, E, d): token t along direction t
    layer.to(device=spec.device, dtype=torch_dtype(spec))
    x = x.to(device=spec.device, dtype=torch_dtype(spec))
    want = torch.stack([layer.experts.forward_expert(t, x[0, t]) for t in range(E)])  # (E, d_ff)
    return [compare_outputs(name, layer(x)[0], want, tol)]


FamilyCheck = Callable[[Spec, Captured, float], list[Check]]
FAMILY_CHECKS: dict[str, tuple[FamilyCheck, ...]] = {
    "smear": (smear_is_meo_at_all_experts,),
    "lory": (lory_one_segment_is_smear, lory_is_causal),
    "soft-moe": (soft_moe_one_hot_dispatch,),
}


def family_checks(spec: Spec, captured: Captured, tol: float) -> list[Check]:
    """The equalities of the spec's variant, on its own model's captured layers (none for a
    variant outside the family)."""
    return [check for fn in FAMILY_CHECKS.get(spec.variant, ()) for check in fn(spec, captured, tol)]
