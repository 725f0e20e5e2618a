"""From a Spec to a model and its inputs: build the host, swap its FFN sites for MoE layers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from meo_profile.models.catalog import host_shape
from meo_profile.models.experts import ExpertBank
from meo_profile.models.hosts import Site, SwiGLU
from meo_profile.models.imposed import impose_routing
from meo_profile.models.layers import SparseLayer
from meo_profile.models.spec import Spec
from meo_profile.models.variants import VARIANTS
from torch import nn

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(spec: Spec) -> torch.dtype:
    return TORCH_DTYPES[spec.dtype]


def make_sparse_layer(spec: Spec, dims: list[int], act: nn.Module | None, bias: bool,
                      gated: bool = False) -> SparseLayer:
    """One MoE layer of the spec's variant over experts of shape `dims` (SwiGLU when `gated`)."""
    g = spec.granularity or 1  # XMoE's small experts: hidden widths / g, experts_total = E * g
    dims = [dims[0], *(width // g for width in dims[1:-1]), dims[-1]]
    bank = ExpertBank(spec.experts_total, dims, act=act, bias=bias, gated=gated)
    variant = VARIANTS[spec.variant]
    router = variant.router(dims[0], spec.experts_total, spec, variant.gates)
    return variant.layer(bank, router, spec)


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
    act = _as_module(getattr(act_owner, act_attr))
    gated = isinstance(act, SwiGLU)  # a fused (gate | up) projection: 2 * d_ff outputs
    if spec.expert_unit == "linear":
        up_width = 2 * d_ff if gated else d_ff  # SwiGLU's combine stays between the MoE linears
        setattr(up_owner, up_attr, make_sparse_layer(spec, [d, up_width], None, bias))
        setattr(down_owner, down_attr, make_sparse_layer(spec, [d_ff, d], None, bias))
        return
    inner = act.act if gated else act  # a SwiGLU bank chunks gate | up itself
    setattr(up_owner, up_attr, make_sparse_layer(spec, [d, d_ff, d], inner, bias, gated=gated))
    setattr(act_owner, act_attr, nn.Identity())
    setattr(down_owner, down_attr, nn.Identity())


def build_model(spec: Spec, device: str | None = None) -> nn.Module:
    """The host of `spec` with its FFN sites swapped, in the spec's dtype, on `device`
    (default the spec's; "meta" builds shapes without memory, for counting)."""
    torch.manual_seed(spec.seed)
    shape = host_shape(spec.host)
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
    impose_routing(model, spec)  # drawn now, before anything is timed
    return model.train(spec.mode == "train")


def make_inputs(spec: Spec, device: str | None = None) -> tuple[torch.Tensor, ...]:
    """A seeded random batch: hidden states (B, T, d) for `layer`, token ids (B, T) otherwise.
    On the meta device only the shape exists (counting needs no values, and a batch too large
    for memory can still be counted)."""
    gen = torch.Generator().manual_seed(spec.seed + 1)
    B, T = spec.batch_size, spec.seq_len
    shape = host_shape(spec.host)
    if (device or spec.device) == "meta":
        hidden = shape.inputs == "hidden"
        size, dtype = ((B, T, spec.d_model), torch_dtype(spec)) if hidden else ((B, T), torch.long)
        return (torch.empty(size, dtype=dtype, device="meta"),)
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
                stand_in = VARIANTS[variant].rerun(child, impl)
                setattr(parent, attr, stand_in)
                swapped.append((parent, attr, child))
    try:
        yield model
    finally:
        for parent, attr, child in swapped:
            setattr(parent, attr, child)
