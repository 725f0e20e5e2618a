"""The variants, one entry each: what a new variant must say about itself, said in one place.

An entry names how reports call the variant, the implementations that can run it (`--impl`),
how its router reads the input (every token, each sequence's mean token, each segment's), the
gate convention of that router and how the router is built, the spec fields only it reads (its
knobs), whether every input reads all E experts (the merging family: k is then E), how to
build its layer from an expert bank and a router, how to rerun an existing layer of any variant
as this one over the same experts and router (what `verify` compares), what some
implementations need of a configuration (`needs`), whether it merges experts per input
(`merges`: at decode it then takes `--merge-reuse`) and, where it cannot decode, why
(`no_decode`).

`--impl auto` has two meanings, kept apart: counting uses the variant's deterministic rule
(`default_impl`, the same on every machine), timing picks by measurement among the
implementations that can run (meo_profile/measure/autotune.py).

`dense` keeps the host's own FFN: it has no layer, no router and no experts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meo_profile.models.compressed import CompressedExperts
from meo_profile.models.experts import ExpertBank
from meo_profile.models.hf_experts import HF_IMPLS
from meo_profile.models.hosts import HOSTS
from meo_profile.models.layers import MergedExperts, SequenceMoE, SparseLayer, TokenMoE
from meo_profile.models.merging import SegmentMerged, merge_groups
from meo_profile.models.routing import Router
from meo_profile.models.soft_moe import SlotRouter, SoftMoE
from meo_profile.models.xmoe import XMoE

# The factories and rules take a `meo_profile.models.spec.Spec`, which validates against this table and so
# is not imported here: it is typed as Any.
Spec = Any
LayerFactory = Callable[[ExpertBank, Router, Spec], SparseLayer]
Rerun = Callable[[SparseLayer, str], SparseLayer]
RouterFactory = Callable[[int, int, Spec, str], Router]  # (d_in, experts, spec, gates) -> Router


def top_k_router(d_in: int, num_experts: int, spec: Spec, gates: str) -> Router:
    """A linear gate over E experts picking the spec's k (MEO's, vanilla MoE's)."""
    return Router(d_in, num_experts, spec.top_k, scale=spec.router_scale, gates=gates)


def merging_router(d_in: int, num_experts: int, spec: Spec, gates: str) -> Router:
    """SMEAR's router (Lory's too): LayerNorm on the routing input, a linear with bias, all E."""
    return Router(d_in, num_experts, num_experts, scale=spec.router_scale, gates=gates,
                  norm=True, bias=True)


def slot_router(d_in: int, num_experts: int, spec: Spec, gates: str) -> Router:
    """Soft MoE's slot parameters Φ, p slots per expert."""
    return SlotRouter(d_in, num_experts, spec.slots_per_expert, scale=spec.router_scale)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # how reports and figures name it
    impls: tuple[str, ...]  # what `--impl` may pick; the first is the default and the reference
    routes: str | None  # "token", "sequence", "segment", or None (no router)
    layer: LayerFactory | None = None  # None: the host's own FFN stays
    rerun: Rerun | None = None  # this variant over another layer's experts and router
    gates: str = "topk_softmax"  # the router's gate convention (models/routing.py)
    router: RouterFactory = top_k_router
    knobs: tuple[str, ...] = ()  # spec fields only this variant reads (None for the others)
    every_expert: bool = False  # every input reads all E experts: k is E, stored so
    # folds expert weights into one expert per input (MEO's merge kernels); its layer is a
    # SequenceRouted whose choice is the merged expert, so at decode it takes `--merge-reuse`:
    # merge again every step, or keep the prompt's merged expert
    merges: bool = False
    auto: Callable[[Spec], str] | None = None  # the rule for `--impl auto`, if not impls[0]
    # impl -> why it cannot run a configuration (None: it can); impls not named run anywhere
    needs: Mapping[str, Callable[[Spec], str | None]] = field(default_factory=dict)
    no_decode: str | None = None  # why the variant has no decode step (None: it decodes)

    def default_impl(self, spec: Spec) -> str:
        """The deterministic rule behind `--impl auto` (what counting and a plain build use)."""
        return self.auto(spec) if self.auto else self.impls[0]

    def unavailable(self, impl: str, spec: Spec) -> str | None:
        need = self.needs.get(impl)
        return need(spec) if need else None


# Kernels timed only on CUDA: on CPU, Triton interprets them in numpy, for correctness checks.
CUDA_ONLY = frozenset({"fused"})


def fused_merge_needs(spec: Spec) -> str | None:
    """The fused merge is a forward-only Triton kernel; CPU and meta tensors count it and
    check it (interpreted), CUDA ones run it compiled."""
    if spec.mode == "train":
        return "the fused merge has no backward: use gather or dense to train"
    if spec.device == "cuda":
        from meo_profile.models.kernels.fused_merge import unavailable  # imports triton: only here

        return unavailable("cuda")
    return None


def gated_ffn_experts(spec: Spec) -> str | None:
    """transformers' experts kernels take SwiGLU FFN experts in their stacked layout: the
    native MoE hosts' own blocks (where the host, not this table, lists them), or a gated bank
    built directly (benchmarks/bench_kernels.py)."""
    if spec.expert_unit == "ffn" and getattr(HOSTS.get(spec.host), "gated", False):
        return None
    return ("transformers' experts kernels run SwiGLU FFN experts: on a native MoE host "
            "(olmoe, mixtral, qwen3-moe, ...) `--variant moe` runs the model's own block with them")


def fewer_bytes_merge(spec: Spec) -> str:
    """MEO's merge that reads fewer bytes: `gather` reads the k selected experts of each
    sequence (B*k matrices), `dense` reads all E once; both write B merged matrices."""
    return "dense" if spec.batch_size * spec.top_k > spec.num_experts else "gather"


def merge_all_rule(spec: Spec) -> str:
    """SMEAR's and Lory's merge reads all E experts for each merged expert: `dense` reads them
    once for all, `gather` once per merged expert; equal bytes only when there is one."""
    return "dense" if merge_groups(spec) > 1 else "gather"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("dense", "dense FFN", ("native",), routes=None),
    Variant("moe", "vanilla MoE", ("grouped", "loop", *HF_IMPLS), routes="token",
            needs={impl: gated_ffn_experts for impl in HF_IMPLS},
            layer=lambda bank, router, spec: TokenMoE(bank, router, spec.impl_by_rule),
            rerun=lambda layer, impl: TokenMoE(layer.experts, layer.router, impl)),
    Variant("moe-seq", "vanilla MoE, sequence-routed", ("grouped", "loop"), routes="sequence",
            layer=lambda bank, router, spec: SequenceMoE(bank, router, spec.impl_by_rule),
            rerun=lambda layer, impl: SequenceMoE(layer.experts, layer.router, impl)),
    Variant("meo", "MEO", ("gather", "dense", "fused"), routes="sequence", auto=fewer_bytes_merge,
            needs={"fused": fused_merge_needs}, merges=True,
            layer=lambda bank, router, spec: MergedExperts(bank, router, spec.impl_by_rule),
            rerun=lambda layer, impl: MergedExperts(layer.experts, layer.router, impl)),
    # a fresh token block is the identity, so `meo` reruns a `meo-token` layer without it
    Variant("meo-token", "MEO + token block", ("gather", "dense", "fused"), routes="sequence",
            auto=fewer_bytes_merge, needs={"fused": fused_merge_needs}, merges=True,
            layer=lambda bank, router, spec: MergedExperts(bank, router, spec.impl_by_rule,
                                                           token_block=True)),
    # compressed experts follow OLMoE: softmax over all E, then top-k, not renormalised; a
    # rerun keeps the layer's own vectors
    Variant("ce", "compressed experts", ("grouped", "loop"), routes="token",
            gates="softmax_topk", knobs=("n_ce", "ce_init"),
            layer=lambda bank, router, spec: CompressedExperts(bank, router, spec.impl_by_rule,
                                                               n_ce=spec.n_ce, init=spec.ce_init),
            rerun=lambda layer, impl: CompressedExperts(layer.experts, layer.router, impl,
                                                        n_ce=layer.n_ce, vectors=layer.vectors)),
    # XMoE's threshold router reads the logits only; a rerun keeps the layer's knobs
    Variant("xmoe", "XMoE", ("grouped", "loop", "padded"), routes="token",
            knobs=("threshold", "granularity", "max_k", "capacity_factor"),
            layer=lambda bank, router, spec: XMoE(bank, router, spec.impl_by_rule,
                                                  threshold=spec.threshold, max_k=spec.max_k,
                                                  capacity_factor=spec.capacity_factor),
            rerun=lambda layer, impl: XMoE(layer.experts, layer.router, impl, **layer.knobs)),
    # the merging family beside MEO (models/merging.py, models/soft_moe.py): every input reads
    # all E experts. SMEAR and Lory merge them with MEO's merge kernels, the dense gate-matrix
    # merge first (SMEAR's own); a softmax over all E is `softmax_topk` at k = E
    Variant("smear", "SMEAR", ("dense", "gather", "fused"), routes="sequence",
            gates="softmax_topk", router=merging_router, every_expert=True, auto=merge_all_rule,
            needs={"fused": fused_merge_needs}, merges=True,
            layer=lambda bank, router, spec: MergedExperts(bank, router, spec.impl_by_rule),
            rerun=lambda layer, impl: MergedExperts(layer.experts, layer.router, impl)),
    Variant("lory", "Lory", ("dense", "gather", "fused"), routes="segment",
            gates="softmax_topk", router=merging_router, every_expert=True, auto=merge_all_rule,
            knobs=("segment_len",), needs={"fused": fused_merge_needs}, merges=True,
            layer=lambda bank, router, spec: SegmentMerged(bank, router, spec.impl_by_rule,
                                                           spec.segment_len),
            rerun=lambda layer, impl: SegmentMerged(layer.experts, layer.router, impl,
                                                    layer.segment_len)),
    # Soft MoE merges tokens, not weights: its experts run on slots (`stacked`: one bmm per
    # matrix over every expert's slots; `loop`: expert by expert)
    Variant("soft-moe", "Soft MoE", ("stacked", "loop"), routes="token", gates="slots",
            router=slot_router, every_expert=True, knobs=("slots_per_expert",),
            no_decode=("mixes every token of a sequence into each slot (no causal order): a "
                       "step of one token has nothing to mix with"),
            layer=lambda bank, router, spec: SoftMoE(bank, router, spec.impl_by_rule),
            rerun=lambda layer, impl: SoftMoE(layer.experts, layer.router, impl)),
)}
