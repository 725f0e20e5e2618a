"""Implementations added for speed compute what the reference ones do: transformers' experts
kernels equal the project's grouped dispatch, the deterministic combine keeps the loop's
result, and `verify` checks every implementation of MEO, the fused merge included."""

from __future__ import annotations

import pytest
import torch
from meo_profile.models import Spec, build_model
from meo_profile.models.experts import ExpertBank
from meo_profile.models.hf_experts import HF_IMPLS, refusal
from meo_profile.models.layers import TOKEN_DISPATCH, dispatch_grouped
from meo_profile.models.routing import Router

from meo_profile.check.verify import verify


def swiglu_bank_and_routing(E=6, k=2, d=32, d_ff=16, N=40, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    bank = ExpertBank(E, [d, d_ff, d], act=torch.nn.SiLU(), bias=False, gated=True).to(dtype)
    router = Router(d, E, k, gates="softmax_topk").to(dtype)
    x = torch.randn(N, d, dtype=dtype)
    return bank, x, router(x)


@pytest.mark.parametrize("impl", list(HF_IMPLS))
def test_transformers_experts_equal_the_project_grouped_dispatch(impl):
    bank, x, routing = swiglu_bank_and_routing()
    with torch.no_grad():
        ours = dispatch_grouped(bank, x, routing)
        theirs = TOKEN_DISPATCH[impl](bank, x, routing)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    # the same parameters, not copies: a change to the bank is a change to transformers' module
    with torch.no_grad():
        bank.weights[1].mul_(2)
        torch.testing.assert_close(TOKEN_DISPATCH[impl](bank, x, routing), 2 * ours,
                                   rtol=1e-5, atol=1e-6)


def test_transformers_experts_refuse_banks_of_another_layout():
    linear = ExpertBank(4, [8, 8])
    assert "SwiGLU" in refusal(linear)
    with pytest.raises(ValueError, match="--impl hf-grouped_mm"):
        TOKEN_DISPATCH["hf-grouped_mm"](linear, torch.randn(3, 8),
                                       Router(8, 4, 2)(torch.randn(3, 8)))


def test_grouped_combine_is_deterministic_and_sums_in_float32_for_bf16():
    bank, x, routing = swiglu_bank_and_routing(dtype=torch.bfloat16, N=64, k=4)
    with torch.no_grad():
        first, second = dispatch_grouped(bank, x, routing), dispatch_grouped(bank, x, routing)
        loop = TOKEN_DISPATCH["loop"](bank.float(), x.float(), routing._replace(
            top_k_weights=routing.top_k_weights.float()))
    assert torch.equal(first, second)
    torch.testing.assert_close(first.float(), loop, rtol=3e-2, atol=3e-2)


def test_verify_checks_every_meo_implementation_including_the_fused_merge():
    pytest.importorskip("triton")
    spec = Spec(d_model=32, d_ff=48, num_experts=4, top_k=2, seq_len=4, batch_size=3)
    checks = {c.name: c for c in verify(spec)}
    fused = checks["meo: fused == gather"]
    assert fused.skipped is None and fused.ok and fused.max_rel_err < 1e-6
    assert {"meo: dense == gather", "moe-seq: loop == grouped", "moe: loop == grouped"} \
        <= set(checks)
    assert not any(name.startswith("moe: hf-") for name in checks)  # layer's experts: not SwiGLU


def test_verify_on_a_native_host_holds_transformers_experts_to_each_other():
    # `moe` on olmoe is the model's own block: transformers' kernels run it, eager the reference
    spec = Spec(host="olmoe", variant="moe", layers=1, d_model=64, d_ff=32, num_experts=4,
                top_k=2, seq_len=4, batch_size=2)
    checks = {c.name: c for c in verify(spec)}
    for impl in set(HF_IMPLS) - {"hf-eager"}:
        assert checks[f"own block: {impl} == hf-eager"].ok


def test_an_olmoe_model_runs_with_the_transformers_experts_kernel_asked_for():
    spec = Spec(host="olmoe", variant="moe", impl="hf-batched_mm", layers=1, d_model=64, d_ff=32,
                num_experts=4, top_k=2, seq_len=4, batch_size=2)
    model = build_model(spec)
    blocks = [m for m in model.modules() if type(m).__name__ == "NativeMoE"]
    assert blocks and all(b.experts.config._experts_implementation == "batched_mm" for b in blocks)


@pytest.mark.gpu
def test_on_cuda_the_fused_merge_is_a_timing_candidate_and_runs_in_a_cuda_graph():
    from meo_profile.measure.autotune import candidates

    spec = Spec(d_model=64, d_ff=128, num_experts=8, top_k=2, seq_len=16, batch_size=4,
                dtype="bfloat16", device="cuda")
    assert "fused" in candidates(spec)
    model = build_model(spec.replace(impl="fused"))
    x = torch.randn(4, 16, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = model(x)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            captured = model(x)
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    checks = verify(spec)
    assert all(c.ok and c.skipped is None for c in checks), [c for c in checks if not c.ok]


@pytest.mark.gpu
@pytest.mark.parametrize("impl", list(HF_IMPLS))
def test_on_cuda_transformers_experts_equal_grouped_in_bf16(impl):
    bank, x, routing = swiglu_bank_and_routing(dtype=torch.bfloat16, N=256)
    bank, x = bank.cuda(), x.cuda()
    routing = routing._replace(top_k_index=routing.top_k_index.cuda(),
                               top_k_weights=routing.top_k_weights.cuda())
    with torch.no_grad():
        torch.testing.assert_close(TOKEN_DISPATCH[impl](bank, x, routing),
                                   dispatch_grouped(bank, x, routing), rtol=3e-2, atol=3e-2)
