"""The variants compute what they claim: equivalences, gradients, dtypes, every host offline."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from meo_profile.models import Spec, build_model, make_inputs, sparse_layers
from meo_profile.models.build import layers_as
from meo_profile.models.routing import Router

from meo_profile.check.verify import check_single_expert, verify

TINY = dict(d_model=32, d_ff=48, seq_len=6, batch_size=3)


@torch.no_grad()
def run_under(model, inputs, variant: str, impl: str) -> torch.Tensor:
    """One forward with every MoE layer run as `variant`/`impl` (same experts and routers)."""
    with layers_as(model, variant, impl):
        return model(*inputs)


def outputs_under(spec, pairs):
    model, inputs = build_model(spec), make_inputs(spec)
    return [run_under(model, inputs, variant, impl) for variant, impl in pairs]


@settings(max_examples=15, deadline=None)
@given(E=st.integers(1, 6), k=st.integers(1, 6), B=st.integers(1, 4), T=st.integers(1, 9),
       unit=st.sampled_from(["linear", "ffn"]))
def test_implementations_of_each_variant_agree(E, k, B, T, unit):
    k = min(k, E)
    spec = Spec(variant="meo", num_experts=E, top_k=k, batch_size=B, seq_len=T, d_model=16,
                d_ff=24, expert_unit=unit)
    loop, grouped, seq_loop, seq_grouped, gather, dense = outputs_under(
        spec, [("moe", "loop"), ("moe", "grouped"), ("moe-seq", "loop"), ("moe-seq", "grouped"),
               ("meo", "gather"), ("meo", "dense")])
    torch.testing.assert_close(grouped, loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seq_grouped, seq_loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense, gather, rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(E=st.integers(2, 8), k=st.integers(1, 8), B=st.integers(1, 4), T=st.integers(1, 9))
def test_meo_equals_sequence_level_moe_for_linear_experts(E, k, B, T):
    spec = Spec(variant="meo", num_experts=E, top_k=min(k, E), batch_size=B, seq_len=T,
                d_model=16, d_ff=24)
    meo, seq = outputs_under(spec, [("meo", "gather"), ("moe-seq", "grouped")])
    torch.testing.assert_close(meo, seq, rtol=1e-5, atol=1e-6)


def test_meo_differs_from_moe_seq_when_experts_are_whole_ffns():
    # merging the matrices of nonlinear experts is not the mixture of their outputs
    spec = Spec(variant="meo", expert_unit="ffn", num_experts=4, top_k=2, **TINY)
    meo, seq = outputs_under(spec, [("meo", "gather"), ("moe-seq", "grouped")])
    assert (meo - seq).abs().max() > 1e-3


def test_token_and_sequence_routing_differ():
    spec = Spec(variant="moe", num_experts=8, top_k=2, **TINY)
    token, seq = outputs_under(spec, [("moe", "grouped"), ("moe-seq", "grouped")])
    assert (token - seq).abs().max() > 1e-3


def test_meo_with_one_expert_is_that_expert():
    check = check_single_expert(Spec(num_experts=5, top_k=1, **TINY), tol=1e-6)
    assert check.ok, check


def test_fresh_token_block_is_identity_and_trained_one_is_not():
    spec = Spec(variant="meo-token", num_experts=4, top_k=2, **TINY)
    model, inputs = build_model(spec), make_inputs(spec)
    with torch.no_grad():
        fresh = model(*inputs)
        plain = run_under(model, inputs, "meo", "gather")
        torch.testing.assert_close(fresh, plain)
        for layer in sparse_layers(model):
            layer.token_block.up.weight.normal_()
        assert (model(*inputs) - plain).abs().max() > 1e-3


def test_router_gates_sum_to_one_and_are_sorted():
    router = Router(16, 8, 3)
    routing = router(torch.randn(10, 16))
    torch.testing.assert_close(routing.top_k_weights.sum(-1), torch.ones(10))
    assert (routing.top_k_weights[:, :-1] >= routing.top_k_weights[:, 1:]).all()


def test_router_scale_sharpens_gates():
    h = torch.randn(50, 16)
    flat, sharp = Router(16, 8, 2), Router(16, 8, 2, scale=20.0)
    sharp.load_state_dict(flat.state_dict())
    assert sharp(h).top_k_weights[:, 0].mean() > flat(h).top_k_weights[:, 0].mean()


@pytest.mark.parametrize("impl", ["gather", "dense"])
def test_gradients_flow_through_the_merge(impl):
    spec = Spec(variant="meo", impl=impl, num_experts=6, top_k=2, mode="train", **TINY)
    model, (x,) = build_model(spec), make_inputs(spec)
    model(x).square().mean().backward()
    layer = sparse_layers(model)[0]
    chosen = layer.router(x.mean(dim=1)).top_k_index.unique()
    grad = layer.experts.weights[0].grad
    assert grad is not None and layer.router.w_gate.weight.grad.abs().sum() > 0
    per_expert = grad.abs().sum(dim=(1, 2))
    assert (per_expert[chosen] > 0).all()
    unchosen = torch.ones(6, dtype=torch.bool)
    unchosen[chosen] = False
    assert (per_expert[unchosen] == 0).all()  # experts nobody picked get no gradient


@pytest.mark.parametrize("variant", ["moe", "moe-seq", "meo", "meo-token"])
def test_bfloat16_runs_on_cpu(variant):
    spec = Spec(variant=variant, num_experts=4, top_k=2, dtype="bfloat16", **TINY)
    y = build_model(spec)(*make_inputs(spec))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("host", ["bert-small", "bert-base", "bert-large", "gpt2", "t5-small", "bart-base"])
@pytest.mark.parametrize("unit", ["linear", "ffn"])
def test_every_host_builds_and_runs_offline(host, unit, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = Spec(host=host, variant="meo", expert_unit=unit, num_experts=3, top_k=2,
                d_model=48, d_ff=64, layers=2, seq_len=5, batch_size=2)
    model = build_model(spec)
    n_layers = 2 * spec.layers if unit == "linear" else spec.layers
    assert len(sparse_layers(model)) == n_layers  # every FFN site swapped, nothing else
    with torch.no_grad():
        logits = model(*make_inputs(spec))
    assert logits.shape[:2] == (2, 5) and torch.isfinite(logits).all()


def test_layers_as_restores_the_original_layers():
    spec = Spec(variant="meo", num_experts=4, top_k=2, **TINY)
    model = build_model(spec)
    before = sparse_layers(model)
    with layers_as(model, "moe", "loop"):
        assert all(type(layer).__name__ == "TokenMoE" for layer in sparse_layers(model))
    assert sparse_layers(model) == before


def test_verify_reports_every_check_and_passes():
    checks = verify(Spec(num_experts=5, top_k=2, **TINY))
    names = {c.name for c in checks}
    assert {"meo == moe-seq", "moe: loop == grouped", "meo: dense == gather",
            "meo k=1 == selected expert"} <= names
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize("variant, extra, names", [
    ("ce", dict(ce_init="random"), {"ce: loop == grouped"}),
    ("xmoe", dict(router_scale=4.0, capacity_factor=1.0),
     {"xmoe: loop == grouped", "xmoe: padded == grouped"}),
])
def test_verify_checks_the_implementations_of_ce_and_xmoe(variant, extra, names):
    checks = verify(Spec(variant=variant, num_experts=4, top_k=2, **TINY, **extra))
    assert names <= {c.name for c in checks}
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_verify_passes_in_bfloat16_layer_by_layer():
    # end to end, a bf16 round-off in the first MoE linear can flip the second one's router
    checks = verify(Spec(num_experts=16, top_k=4, dtype="bfloat16", d_model=128, d_ff=256,
                         seq_len=32, batch_size=8))
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_verify_catches_a_merge_that_ignores_the_gates(monkeypatch):
    from meo_profile.models import experts

    def unweighted(w, b, index, gates):  # every selected expert at weight 1/k
        return experts.merge_gather(w, b, index, torch.full_like(gates, 1 / gates.shape[1]))

    monkeypatch.setitem(experts.MERGES, "dense", unweighted)
    checks = {c.name: c for c in verify(Spec(num_experts=6, top_k=2, **TINY))}
    assert not checks["meo: dense == gather"].ok and checks["meo: dense == gather"].max_rel_err > 1e-3
