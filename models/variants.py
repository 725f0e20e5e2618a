"""The variants, one entry each: what a new variant must say about itself, said in one place.

An entry names how reports call the variant, the implementations that can run it (`--impl`),
how its router reads the input (every token, or each sequence's mean token), the gate
convention of that router, the spec fields only it reads (its knobs), how to build its layer
from an expert bank and a router, and how to rerun an existing layer of any variant as this one
over the same experts and router (what `verify` compares).

`dense` keeps the host's own FFN: it has no layer, no router and no experts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.compressed import CompressedExperts
from models.experts import ExpertBank
from models.layers import MergedExperts, SequenceMoE, SparseLayer, TokenMoE
from models.routing import Router
from models.xmoe import XMoE

# The factories and rules take a `models.spec.Spec`, which validates against this table and so
# is not imported here: it is typed as Any.
Spec = Any
LayerFactory = Callable[[ExpertBank, Router, Spec], SparseLayer]
Rerun = Callable[[SparseLayer, str], SparseLayer]


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # how reports and figures name it
    impls: tuple[str, ...]  # what `--impl` may pick; the first is the default and the reference
    routes: str | None  # "token", "sequence", or None (no router)
    layer: LayerFactory | None = None  # None: the host's own FFN stays
    rerun: Rerun | None = None  # this variant over another layer's experts and router
    gates: str = "topk_softmax"  # the router's gate convention (models/routing.py)
    knobs: tuple[str, ...] = ()  # spec fields only this variant reads (None for the others)
    auto: Callable[[Spec], str] | None = None  # `--impl auto` when not simply impls[0]

    def default_impl(self, spec: Spec) -> str:
        return self.auto(spec) if self.auto else self.impls[0]


def fewer_bytes_merge(spec: Spec) -> str:
    """MEO's merge that reads fewer bytes: `gather` reads the k selected experts of each
    sequence (B*k matrices), `dense` reads all E once; both write B merged matrices."""
    return "dense" if spec.batch_size * spec.top_k > spec.num_experts else "gather"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("dense", "dense FFN", ("native",), routes=None),
    Variant("moe", "vanilla MoE", ("grouped", "loop"), routes="token",
            layer=lambda bank, router, spec: TokenMoE(bank, router, spec.impl),
            rerun=lambda layer, impl: TokenMoE(layer.experts, layer.router, impl)),
    Variant("moe-seq", "vanilla MoE, sequence-routed", ("batched", "loop"), routes="sequence",
            layer=lambda bank, router, spec: SequenceMoE(bank, router, spec.impl),
            rerun=lambda layer, impl: SequenceMoE(layer.experts, layer.router, impl)),
    Variant("meo", "MEO", ("gather", "dense"), routes="sequence", auto=fewer_bytes_merge,
            layer=lambda bank, router, spec: MergedExperts(bank, router, spec.impl),
            rerun=lambda layer, impl: MergedExperts(layer.experts, layer.router, impl)),
    # a fresh token block is the identity, so `meo` reruns a `meo-token` layer without it
    Variant("meo-token", "MEO + token block", ("gather", "dense"), routes="sequence",
            auto=fewer_bytes_merge,
            layer=lambda bank, router, spec: MergedExperts(bank, router, spec.impl,
                                                           token_block=True)),
    # compressed experts follow OLMoE: softmax over all E, then top-k, not renormalised; a
    # rerun keeps the layer's own vectors
    Variant("ce", "compressed experts", ("grouped", "loop"), routes="token",
            gates="softmax_topk", knobs=("n_ce", "ce_init"),
            layer=lambda bank, router, spec: CompressedExperts(bank, router, spec.impl,
                                                               n_ce=spec.n_ce, init=spec.ce_init),
            rerun=lambda layer, impl: CompressedExperts(layer.experts, layer.router, impl,
                                                        n_ce=layer.n_ce, vectors=layer.vectors)),
    # XMoE's threshold router reads the logits only; a rerun keeps the layer's knobs
    Variant("xmoe", "XMoE", ("grouped", "loop", "padded"), routes="token",
            knobs=("threshold", "granularity", "max_k", "capacity_factor"),
            layer=lambda bank, router, spec: XMoE(bank, router, spec.impl,
                                                  threshold=spec.threshold, max_k=spec.max_k,
                                                  capacity_factor=spec.capacity_factor),
            rerun=lambda layer, impl: XMoE(layer.experts, layer.router, impl, **layer.knobs)),
)}
