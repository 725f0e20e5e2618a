"""Numerical checks that the variants compute what they claim, on random inputs.

Every comparison runs one model, built once, under two variants or implementations that share
its experts and routers (`layers_as`), so a mismatch is a bug, not a seeding accident.
Error measure: max |a - b| / max |b| (relative to the reference's scale, robust to entries near 0).
"""

from __future__ import annotations

import contextlib

import torch

from meo_profile.check.comparison import Check, compare_outputs
from meo_profile.check.family import family_checks
from meo_profile.measure.preflight import check_fits
from meo_profile.models import Spec, build_model, make_inputs, sparse_layers
from meo_profile.models.catalog import host_shape
from meo_profile.models.layers import MergedExperts, SparseLayer
from meo_profile.models.native import NativeMoE
from meo_profile.models.spec import SpecError
from meo_profile.models.variants import CUDA_ONLY, VARIANTS

# Relative tolerance per dtype: float32 reorders sums (merge-then-matmul vs matmul-then-sum).
TOLERANCE = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}


@torch.no_grad()
def captured_inputs(model, inputs) -> list[tuple[SparseLayer, torch.Tensor]]:
    """Every MoE layer with the input it received in one forward of `model`."""
    seen: list[tuple[SparseLayer, torch.Tensor]] = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append((m, args[0])))
             for layer in sparse_layers(model)]
    try:
        model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@torch.no_grad()
def layer_outputs(captured, variant: str, impl: str) -> torch.Tensor:
    """Each layer run as `variant`/`impl` on its captured input, outputs concatenated.

    Layer by layer on the same inputs, not end to end: in bfloat16 a round-off difference in
    one layer can flip the next layer's router for a few tokens, which would read as a
    mismatch between implementations that agree."""
    rerun = VARIANTS[variant].rerun
    return torch.cat([rerun(layer, impl)(x).flatten() for layer, x in captured])


@torch.no_grad()
def verify(spec: Spec, max_memory_bytes: int | None = None) -> list[Check]:
    """All checks that apply to the spec's host, sizes and expert unit (refused before anything
    is built when the forward would not fit: preflight.DoesNotFit)."""
    if spec.device == "meta":
        raise SpecError("device", "meta", "verify compares real outputs: use cpu or cuda")
    if spec.workload != "prefill":  # not silently a prefill check under a decode flag
        raise SpecError("workload", spec.workload, "verify compares the variants over one "
                        "prefill: use --workload prefill")
    check_fits(spec.replace(mode="inference"), max_memory_bytes)
    tol = TOLERANCE[spec.dtype]
    # the merging family stores k = E: MEO's checks run at the host's k (smear's own compare
    # it with MEO at k = E)
    every = VARIANTS[spec.variant].every_expert
    k = min(host_shape(spec.host).top_k, spec.num_experts) if every else spec.top_k
    base = spec.replace(variant="meo-token" if spec.variant == "meo-token" else "meo", impl="auto",
                        mode="inference", top_k=k)
    captured = captured_inputs(build_model(base), make_inputs(base))
    checks = []
    meo = layer_outputs(captured, "meo", VARIANTS["meo"].impls[0])
    if spec.variant == "meo-token":
        as_built = torch.cat([layer(x).flatten() for layer, x in captured])
        checks.append(compare_outputs("meo-token (fresh block) == meo", as_built, meo, tol))
    if spec.expert_unit == "linear":  # with FFN experts the merge is not exact, by design
        checks.append(compare_outputs("meo == moe-seq", meo, layer_outputs(captured, "moe-seq", "grouped"), tol))
    for variant in ("moe", "moe-seq", "meo"):
        checks += implementations_agree(captured, variant, spec, tol)
    checks.append(check_single_expert(spec, tol))
    if host_shape(spec.host).native:
        checks += native_implementations_agree(spec, tol)
    if VARIANTS[spec.variant].knobs or spec.variant in OWN_MODEL:  # its own layers, knobs, vectors
        own = spec.replace(mode="inference")
        captured = captured_inputs(build_model(own), make_inputs(own))
        checks += implementations_agree(captured, spec.variant, spec, tol)
        checks += family_checks(spec, captured, tol)
    return checks


# Variants whose checks run on a model of their own (besides those with knobs): their routers
# differ from MEO's.
OWN_MODEL = ("smear",)


def implementations_agree(captured, variant: str, spec: Spec, tol: float) -> list[Check]:
    """Every implementation of `variant` that applies to the spec's experts against the
    first, layer by layer. CUDA kernels run on CPU tensors through Triton's interpreter."""
    reference_impl, *others = VARIANTS[variant].impls
    ref = layer_outputs(captured, variant, reference_impl)
    checks = []
    for impl in others:
        name = f"{variant}: {impl} == {reference_impl}"
        if VARIANTS[variant].unavailable(impl, spec.replace(variant=variant, impl="auto",
                                                            mode="inference")):
            continue  # not an implementation of these experts (transformers' need SwiGLU FFNs)
        with kernel_setting(impl, spec.device) as absent:
            if absent:
                checks.append(Check(name, float("nan"), float("nan"), tol, skipped=absent))
                continue
            checks.append(compare_outputs(name, layer_outputs(captured, variant, impl), ref, tol))
    return checks


@contextlib.contextmanager
def kernel_setting(impl: str, device: str):
    """Yields None where `impl` can run on `device` (CUDA kernels on CPU: interpreted inside
    the block), or the reason it cannot (triton not installed)."""
    if impl not in CUDA_ONLY:
        yield None
        return
    from meo_profile.models.kernels import fused_merge

    with fused_merge.interpreted() if device == "cpu" else contextlib.nullcontext():
        yield fused_merge.unavailable(device)


@torch.no_grad()
def check_single_expert(spec: Spec, tol: float) -> Check:
    """MEO with k = 1 is the one selected expert, applied unchanged (gate softmax of one = 1)."""
    layer_spec = spec.replace(host="layer", variant="meo", top_k=1, impl="auto", layers=None,
                              mode="inference")
    layer = sparse_layers(build_model(layer_spec))[0]
    assert isinstance(layer, MergedExperts)
    x = torch.randn(spec.batch_size, spec.seq_len, layer.experts.d_in,
                    generator=torch.Generator().manual_seed(spec.seed), dtype=torch.float32)
    x = x.to(device=spec.device, dtype=layer.experts.weights[0].dtype)
    chosen = layer.router(x.mean(dim=1)).top_k_index[:, 0]  # (B,)
    want = torch.stack([layer.experts.forward_expert(int(e), x[b]) for b, e in enumerate(chosen)])
    return compare_outputs("meo k=1 == selected expert", layer(x), want, tol)


@torch.no_grad()
def native_implementations_agree(spec: Spec, tol: float) -> list[Check]:
    """A native host's own MoE blocks (`moe`, the model's E and k) under every transformers
    experts implementation against `hf-eager`, the plain per-expert loop, block by block on
    the inputs each block saw."""
    impls = host_shape(spec.host).impls["moe"]
    moe = spec.replace(variant="moe", impl=impls[0], num_experts=None, top_k=None, mode="inference")
    model = build_model(moe)
    seen: list[tuple[NativeMoE, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0])))
             for m in model.modules() if isinstance(m, NativeMoE)]
    try:
        model(*make_inputs(moe))
    finally:
        for hook in hooks:
            hook.remove()

    def outputs(impl: str) -> torch.Tensor:
        model.model.set_experts_implementation(impl.removeprefix("hf-"))
        return torch.cat([block(x).flatten() for block, x in seen])

    reference = outputs("hf-eager")
    return [compare_outputs(f"own block: {impl} == hf-eager", outputs(impl), reference, tol)
            for impl in impls if impl != "hf-eager"]
