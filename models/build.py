"""From a Spec to a model and its inputs: build the host, swap its FFN sites for MoE layers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from models.experts import ExpertBank
from models.hosts import HOSTS, Site
from models.layers import MergedExperts, SequenceMoE, SparseLayer, TokenMoE
from models.routing import Router
from models.spec import Spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# variant -> (bank, router, spec) -> layer. `dense` has no entry: it keeps the host's own FFN.
LAYERS: dict[str, Callable[[ExpertBank, Router, Spec], SparseLayer]] = {
    "moe": lambda bank, router, spec: TokenMoE(bank, router, spec.impl),
    "moe-seq": lambda bank, router, spec: SequenceMoE(bank, router, spec.impl),
    "meo": lambda bank, router, spec: MergedExperts(bank, router, spec.impl),
    "meo-token": lambda bank, router, spec: MergedExperts(bank, router, spec.impl, token_block=True),
}


def torch_dtype(spec: Spec) -> torch.dtype:
    return DTYPES[spec.dtype]


def make_sparse_layer(spec: Spec, dims: list[int], act: nn.Module | None, bias: bool) -> SparseLayer:
    """One MoE layer of the spec's variant over experts of shape `dims`."""
    bank = ExpertBank(spec.experts_total, dims, act=act, bias=bias)
    router = Router(dims[0], spec.experts_total, spec.top_k, scale=spec.router_scale)
    return LAYERS[spec.variant](bank, router, spec)


def _as_module(act: object) -> nn.Module:
    return act if isinstance(act, nn.Module) else _FunctionModule(act)


class _FunctionModule(nn.Module):
    """An activation given as a plain function (BART's `activation_fn`), as a module."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def swap_site(site: Site, spec: Spec, bias: bool) -> None:
    """Replace one FFN by MoE layers: each linear its own layer (`linear`), or one layer whose
    experts are whole FFNs (`ffn`, the activation moving inside the experts)."""
    d, d_ff = spec.d_model, spec.d_ff
    (up_owner, up_attr), (act_owner, act_attr), (down_owner, down_attr) = site
    if spec.expert_unit == "linear":
        setattr(up_owner, up_attr, make_sparse_layer(spec, [d, d_ff], None, bias))
        setattr(down_owner, down_attr, make_sparse_layer(spec, [d_ff, d], None, bias))
        return
    act = _as_module(getattr(act_owner, act_attr))
    setattr(up_owner, up_attr, make_sparse_layer(spec, [d, d_ff, d], act, bias))
    setattr(act_owner, act_attr, nn.Identity())
    setattr(down_owner, down_attr, nn.Identity())


def build_model(spec: Spec, device: str | None = None) -> nn.Module:
    """The host of `spec` with its FFN sites swapped, in the spec's dtype, on `device`
    (default the spec's; "meta" builds shapes without memory, for counting)."""
    torch.manual_seed(spec.seed)
    shape = HOSTS[spec.host]
    with torch.device(device or spec.device):
        model, sites = shape.build(spec)
        if spec.variant == "dense":
            # a plain attribute (not registered as submodules): lets counters attribute the
            # dense FFN's matmuls to "ffn" without guessing from module names
            model.ffn_modules = [getattr(*s.up) for s in sites] + [getattr(*s.down) for s in sites]
        else:
            for site in sites:
                swap_site(site, spec, bias=shape.bias)
    model = model.to(torch_dtype(spec))
    return model.train(spec.mode == "train")


def make_inputs(spec: Spec, device: str | None = None) -> tuple[torch.Tensor, ...]:
    """A seeded random batch: hidden states (B, T, d) for `layer`, token ids (B, T) otherwise."""
    gen = torch.Generator().manual_seed(spec.seed + 1)
    B, T = spec.batch_size, spec.seq_len
    shape = HOSTS[spec.host]
    if shape.inputs == "hidden":
        x = torch.randn(B, T, spec.d_model, generator=gen).to(torch_dtype(spec))
    else:
        x = torch.randint(0, shape.vocab, (B, T), generator=gen)
    return (x.to(device or spec.device),)


def sparse_layers(model: nn.Module) -> list[SparseLayer]:
    return [m for m in model.modules() if isinstance(m, SparseLayer)]


@contextlib.contextmanager
def layers_as(model: nn.Module, variant: str, impl: str) -> Iterator[nn.Module]:
    """Temporarily run every MoE layer of `model` as another variant/implementation over the
    same experts and routers (so outputs are comparable weight for weight); restored on exit.
    A fresh `meo-token` block is the identity, so `meo-token` -> `meo` drops it."""
    swapped = []
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, SparseLayer):
                stand_in = REBUILD[variant](child, impl)
                setattr(parent, attr, stand_in)
                swapped.append((parent, attr, child))
    try:
        yield model
    finally:
        for parent, attr, child in swapped:
            setattr(parent, attr, child)


REBUILD: dict[str, Callable[[SparseLayer, str], SparseLayer]] = {
    "moe": lambda layer, impl: TokenMoE(layer.experts, layer.router, impl),
    "moe-seq": lambda layer, impl: SequenceMoE(layer.experts, layer.router, impl),
    "meo": lambda layer, impl: MergedExperts(layer.experts, layer.router, impl),
}
