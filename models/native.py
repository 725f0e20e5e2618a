"""Native MoE hosts: transformers MoE models, by name or from a user's `config.json` (`hf:PATH`).

The host is built from its config (models/native_configs.py) with random weights, and its
sparse blocks are found from the modules themselves (models/discover.py). Then, by variant:

- `moe` runs each block as the model defines it: its own router and gate convention, its own
  experts under a transformers experts implementation (`--impl hf-grouped_mm`, `hf-batched_mm`
  or `hf-eager`), shared experts and dense layers as they are;
- every other variant replaces the routed experts only. The block becomes
  `y = routed(x) + g(x) * sum_i shared_i(x)` (g = sigmoid(shared_gate(x)) where the model gates
  its shared experts, as Qwen2-MoE does, else 1), with the shared experts and their gate kept;
  `routed` is an FFN site of one routed expert's shape, which the variant swaps as on any host
  (its router is the variant's, not the model's: see `router_gates`). `dense` leaves that FFN
  as it is: one routed expert's FFN through which every token goes, beside the shared experts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from types import SimpleNamespace
from typing import Any

import torch
from meo_profile.models.discover import MoEBlock, MoELayoutError, find_moe_blocks
from meo_profile.models.errors import SpecError
from meo_profile.models.hosts import FFNBlock, HostShape, LogitsOnly, Site, SwiGLU
from meo_profile.models.native_configs import (
    PUBLISHED,
    check_sizes,
    is_hf,
    make_config,
    own_sizes,
    quiet_transformers,
)
from torch import nn

# `--impl` of `moe` on a native host: transformers' experts implementations, by their names
# there with an `hf-` prefix (the first is the default: transformers' own where supported).
NATIVE_MOE_IMPLS = ("hf-grouped_mm", "hf-batched_mm", "hf-eager")
# The named hosts' router conventions, as discovery reads them (the tests hold them equal).
NAMED_ROUTER_GATES = {
    "mixtral": "softmax_topk_renorm", "qwen2-moe": "softmax_topk",
    "qwen3-moe": "softmax_topk_renorm", "deepseek-v3": "sigmoid_topk_renorm+grouped+bias*2.5",
    "olmoe": "softmax_topk", "phimoe": "sparsemixer",
}
# The largest block the shared-experts probe copies (parameters): scaled-down hosts only.
PROBE_MAX_PARAMS = 50_000_000


class NativeMoE(nn.Module):
    """`--variant moe` on a native host: the model's own sparse block, run as it is. It knows
    its experts, so counters can say what one token reads (k of E routed experts)."""

    def __init__(self, info: MoEBlock):
        super().__init__()
        self.block = info.block
        self.experts_attr, self.router_attr = info.experts_attr, info.router_attr
        self.num_experts, self.top_k, self.expert_numel = info.num_experts, info.top_k, info.expert_numel
        self.hidden, self.expert_width = info.hidden, info.expert_width
        self.router_gates = info.router_gates
        # The experts the last forward chose (N, k), kept by a hook on the router
        # (models/imposed.py), as a SparseLayer keeps its own; None before any forward.
        self.last_top_k_index: torch.Tensor | None = None
        self.imposed = None  # the choice `--routing` imposes (models/imposed.py), if any

    @property
    def experts(self) -> nn.Module:
        return getattr(self.block, self.experts_attr)

    @property
    def router(self) -> nn.Module:
        return getattr(self.block, self.router_attr)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block(hidden_states)

    def params_active(self) -> int:
        idle = (self.num_experts - self.top_k) * self.expert_numel
        return sum(p.numel() for p in self.parameters()) - idle


class WithSharedExperts(nn.Module):
    """A native block whose routed experts were replaced: routed(x) + g(x) * sum_i shared_i(x),
    x (B, T, H) -> (B, T, H); g = sigmoid(shared_gate(x)) when the model has that gate, else 1."""

    def __init__(self, routed: nn.Module, shared: dict[str, nn.Module],
                 shared_gate: nn.Module | None = None):
        super().__init__()
        self.routed = routed
        self.shared = nn.ModuleDict(shared)
        self.shared_gate = shared_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.routed(x)
        if not self.shared:
            return y
        shared = sum(mlp(x) for mlp in self.shared.values())  # (B, T, H)
        if self.shared_gate is not None:
            shared = torch.sigmoid(self.shared_gate(x)) * shared  # (B, T, 1) * (B, T, H)
        return y + shared


class CausalLogits(LogitsOnly):
    """Token ids in, logits out, without a key/value cache (one forward needs none)."""

    def __init__(self, model: nn.Module):
        super().__init__(model, seq2seq=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


# ------------------------------------------------------------------------------- building
def routed_site(info: MoEBlock) -> tuple[FFNBlock, Site]:
    """An FFN of one routed expert's shape (SwiGLU where the experts are gated), and its site."""
    d, d_ff, bias = info.hidden, info.expert_width, info.expert_bias
    act = SwiGLU(info.activation) if info.gated else info.activation
    ffn = FFNBlock(nn.Linear(d, (2 if info.gated else 1) * d_ff, bias=bias), act,
                   nn.Linear(d_ff, d, bias=bias))
    return ffn, Site((ffn, "up"), (ffn, "act"), (ffn, "down"))


def with_shared(info: MoEBlock, routed: nn.Module) -> WithSharedExperts:
    block = info.block
    gate = getattr(block, info.shared_gate) if info.shared_gate else None
    return WithSharedExperts(routed, {a: getattr(block, a) for a in info.shared}, gate)


def build_native(spec: Any) -> tuple[nn.Module, list[Site]]:
    """The host of `spec` (see the module doc) and the FFN sites the variant swaps (none for
    `moe`). Parts the counters cannot tell by type are tagged on the model (`tagged_parts`)."""
    model = _from_config(spec, spec.impl_by_rule)
    blocks = _blocks(model, spec)
    tags = dense_layer_tags(model, blocks)
    sites = []
    for info in blocks:
        tags += [(getattr(info.block, a), "shared_experts") for a in (*info.shared, info.shared_gate) if a]
        if spec.variant == "moe":
            tags += [(info.experts, "experts"), (info.router, "router")]
            setattr(info.parent, info.attr, NativeMoE(info))
            continue
        ffn, site = routed_site(info)
        setattr(info.parent, info.attr, with_shared(info, ffn))
        sites.append(site)
    if spec.variant != "moe" and not next(model.parameters()).is_meta:  # needs real numbers
        check_shared_combine(spec.host, blocks)
    wrapper = CausalLogits(model)
    wrapper.tagged_parts = tags  # a plain attribute: not registered as submodules
    return wrapper, sites


# Swapped variants drop the model's routed experts: they are built as a stub of two experts
# (discovery needs E >= 2) and one choice, sparing a whole bank only to throw it away.
STUB_ROUTING = {"num_experts": 2, "top_k": 1}


def host_config(spec: Any):
    """The transformers config the spec's host is built from (models/native_configs.py)."""
    if spec.variant == "moe":
        return make_config(spec.host, spec)
    return make_config(spec.host, SimpleNamespace(**{**vars_of(spec), **STUB_ROUTING}))


def _from_config(spec: Any, impl: str) -> nn.Module:
    """The transformers model of `spec`'s config; `impl` (an `hf-*` name) picks the experts
    kernel of the model's own blocks where `moe` runs them."""
    from transformers import AutoModelForCausalLM

    kwargs = {"experts_implementation": impl.removeprefix("hf-")} if spec.variant == "moe" else {}
    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_config(host_config(spec), **kwargs)
    except ValueError as e:  # no causal-LM class for this model_type
        raise SpecError("host", spec.host, f"not a causal language model: {str(e).splitlines()[0][:160]}") from None


def vars_of(spec: Any) -> dict[str, Any]:
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(vars(spec))


def discover(model: nn.Module, host: str) -> list[MoEBlock]:
    try:
        return find_moe_blocks(model)
    except MoELayoutError as e:
        raise SpecError("host", host, str(e)) from None


def _blocks(model: nn.Module, spec: Any) -> list[MoEBlock]:
    """The model's MoE blocks, held to the spec's sizes (SpecError on any difference)."""
    blocks = discover(model, spec.host)
    want = {"d_model": spec.d_model, "d_ff": spec.d_ff}
    if spec.variant == "moe":  # other variants bring their own experts
        want["num_experts"] = spec.num_experts
    for info in blocks:
        got = {"d_model": info.hidden, "d_ff": info.expert_width, "num_experts": info.num_experts}
        for name in want:
            if got[name] != want[name]:
                raise SpecError(name, want[name], f"{spec.host} built {got[name]} at {info.name}: "
                                "this config does not take the value")
        if spec.variant == "moe" and info.top_k != spec.top_k:
            raise SpecError("top_k", spec.top_k, f"{spec.host}'s own router ({info.router_gates}) "
                            f"picks {info.top_k} experts; other variants take any k")
    return blocks


def dense_layer_tags(model: nn.Module, blocks: list[MoEBlock]) -> list[tuple[nn.Module, str]]:
    """The dense FFNs of layers without a sparse block (DeepSeek-V3's first layers, Qwen's
    `mlp_only_layers`): the blocks' attribute in the other layers of the same class."""
    moe = {id(b.block) for b in blocks}
    layer_types, attrs = {type(b.parent) for b in blocks}, {b.attr for b in blocks}
    return [(child, "dense_ffn") for layer in model.modules() if type(layer) in layer_types
            for attr in attrs
            if isinstance(child := getattr(layer, attr, None), nn.Module) and id(child) not in moe]


class _NoExperts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@torch.no_grad()
def check_shared_combine(host: str, blocks: list[MoEBlock]) -> None:
    """Hold `WithSharedExperts` to the model's own arithmetic: with its routed experts at zero,
    a copy of the first block of each class must equal the shared path alone; SpecError for
    a block that combines its shared experts otherwise. Scaled-down blocks only (a copy)."""
    seen = set()
    for info in blocks:
        n_params = sum(p.numel() for p in info.block.parameters())
        if type(info.block) in seen or not info.shared or n_params > PROBE_MAX_PARAMS:
            continue
        seen.add(type(info.block))
        block = copy.deepcopy(info.block).float().eval()
        for p in getattr(block, info.experts_attr).parameters():
            p.zero_()
        device = next(block.parameters()).device
        x = torch.randn(2, 3, info.hidden, generator=torch.Generator().manual_seed(0)).to(device)
        want = block(x)
        got = with_shared(dataclasses.replace(info, block=block), _NoExperts())(x)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise SpecError("host", host, f"{type(block).__name__} combines its shared experts "
                            "otherwise than routed + gate * shared: its experts cannot be swapped")


# ---------------------------------------------------------------------------- host shapes
def _shape(own, **native: Any) -> HostShape:
    """A native host's shape: its own sizes as the spec's defaults. `heads` is 1 for the
    generic check: the host checks its sizes against its config itself (`check`)."""
    fields = dict(vocab=own.vocab, build=build_native, inputs="ids", bias=False,
                  experts=own.experts, top_k=own.top_k, expert_unit="ffn", native=True, gated=True,
                  decode="causal")
    return HostShape(own.d_model, own.d_ff, own.layers, 1, **{**fields, **native})


def _checker(host: str, own_top_k: int | None = None):
    def check(spec: Any) -> None:
        check_sizes(host, spec)
        if spec.variant == "moe" and own_top_k is not None and spec.top_k != own_top_k:
            raise SpecError("top_k", spec.top_k, f"{host}'s own router picks {own_top_k} experts "
                            "whatever its config says; other variants take any k")

    return check


DENSE_FIRST_LAYERS = ("deepseek-v3",)


@functools.cache
def named_shape(host: str) -> HostShape:
    """A published model (models/native_configs.PUBLISHED)."""
    fixed_k = 2 if host == "phimoe" else None  # Phi-3.5-MoE's sparsemixer always routes 2
    # every decoder layer of the published models is the same MoE block, but DeepSeek-V3's
    # first ones are dense: counting may extrapolate from two layers for the others
    return _shape(own_sizes(host), router_gates=NAMED_ROUTER_GATES[host],
                  impls={"moe": NATIVE_MOE_IMPLS}, check=_checker(host, fixed_k),
                  uniform_blocks=host not in DENSE_FIRST_LAYERS)


@functools.cache
def hf_shape(host: str) -> HostShape:
    """`hf:PATH`: the config read, its model built on the meta device and its blocks found,
    once per path; SpecError naming the host when any of that fails."""
    own = own_sizes(host)
    at_own = SimpleNamespace(variant="moe", d_model=own.d_model, d_ff=own.d_ff, layers=own.layers,
                             num_experts=own.experts, top_k=own.top_k, seq_len=0, impl="hf-eager",
                             host=host, device="meta")
    try:
        with torch.device("meta"):
            model = _from_config(at_own, at_own.impl)
    except SpecError:
        raise
    except Exception as e:  # the family's own code refusing this config
        raise SpecError("host", host, f"does not build: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}") from None
    info = discover(model, host)[0]
    own_k = info.top_k if info.top_k != own.top_k else None
    impls = NATIVE_MOE_IMPLS if info.kernels else ("hf-eager",)  # eager: the class's own forward
    return _shape(own, bias=info.expert_bias, gated=info.gated, router_gates=info.router_gates,
                  impls={"moe": impls}, check=_checker(host, own_k))


def native_shape(host: str) -> HostShape | None:
    if is_hf(host):
        return hf_shape(host)
    return named_shape(host) if host in PUBLISHED else None
