"""Compressed experts compute the paper's arithmetic: checked against a per-token brute force."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from meo_profile.models import Spec, build_model, make_inputs, sparse_layers
from meo_profile.models.build import layers_as, make_sparse_layer
from meo_profile.models.compressed import CompressedExperts, model_rel_l2_error, rel_l2_error
from meo_profile.models.layers import TokenMoE
from meo_profile.models.routing import Router
from torch import nn

TINY = dict(d_model=16, d_ff=24, seq_len=5, batch_size=3)


def ce_layer(E=6, k=4, n_ce=2, d=8, d_ff=12, kind="swiglu", bias=False, init="random",
             impl="grouped", seed=0) -> CompressedExperts:
    """One ce layer over experts of `kind`: swiglu (OLMoE/Phi), ffn (GELU) or linear."""
    torch.manual_seed(seed)
    spec = Spec(variant="ce", num_experts=E, top_k=k, n_ce=n_ce, ce_init=init, impl=impl,
                d_model=d, d_ff=d_ff)
    dims, act, gated = {"swiglu": ([d, d_ff, d], nn.SiLU(), True),
                        "ffn": ([d, d_ff, d], nn.GELU(), False),
                        "linear": ([d, d_ff], None, False)}[kind]
    return make_sparse_layer(spec, dims, act, bias, gated=gated).eval()


def expert_by_hand(layer: CompressedExperts, e: int, x: torch.Tensor, v: torch.Tensor,
                   kind: str) -> torch.Tensor:
    """Expert e on one token x with the averaged vector v, written out as the paper's formula."""
    bank = layer.experts
    W = [w[e] for w in bank.weights]
    b = [bb[e] for bb in bank.biases] if bank.biases is not None else [0.0] * len(W)
    d = bank.dims[0]
    if kind == "swiglu":  # down(act(gate(x * e1)) * up(x * e3) * e2), e2 of expert width
        f = bank.dims[1]
        e1, e3, e2 = v[:d], v[d:2 * d], v[2 * d:]
        b0 = b[0] if bank.biases is not None else torch.zeros(2 * f)
        gate = W[0][:f] @ (x * e1) + b0[:f]
        up = W[0][f:] @ (x * e3) + b0[f:]
        return W[1] @ (F.silu(gate) * up * e2) + b[1]
    if kind == "ffn":  # down(act(up(x * e_up)) * e_down)
        h = F.gelu(W[0] @ (x * v[:d]) + b[0])
        return W[1] @ (h * v[d:]) + b[1]
    return W[0] @ (x * v) + b[0]  # linear: W (x * e_in) + b


@torch.no_grad()
def brute_force(layer: CompressedExperts, x: torch.Tensor, kind: str,
                vector: torch.Tensor | None = None) -> torch.Tensor:
    """Per token: softmax over all E, top-k; main experts weighted by raw p; aux vectors averaged
    with p renormalised over the aux set (or the given `vector` for every token)."""
    k, m = layer.router.top_k, layer.main_k
    probs = layer.router.logits(x).softmax(dim=-1)  # (N, E)
    top_p, top_i = probs.topk(k, dim=-1)
    V = layer.vectors.weight
    out = []
    for t in range(x.shape[0]):
        aux_p, aux_i = top_p[t, m:], top_i[t, m:]
        v = (aux_p[:, None] * V[aux_i]).sum(0) / aux_p.sum() if k > m else torch.ones(V.shape[1])
        v = v if vector is None else vector
        out.append(sum(top_p[t, i] * expert_by_hand(layer, int(top_i[t, i]), x[t], v, kind)
                       for i in range(m)))
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(E=st.integers(2, 7), k=st.integers(1, 7), n_ce=st.integers(0, 6), N=st.integers(1, 9),
       kind=st.sampled_from(["swiglu", "ffn", "linear"]), bias=st.booleans(),
       wide=st.booleans(), impl=st.sampled_from(["grouped", "loop"]))
def test_ce_matches_the_per_token_brute_force(E, k, n_ce, N, kind, bias, wide, impl):
    k = min(k, E)
    n_ce = min(n_ce, k - 1)
    d_ff = 12 if wide else 6  # wide: expert width > hidden, as Phi-3.5-MoE (6400 > 4096)
    layer = ce_layer(E, k, n_ce, d=8, d_ff=d_ff, kind=kind, bias=bias, impl=impl)
    x = torch.randn(N, 8)
    with torch.no_grad():
        got = layer(x.view(1, N, 8)).view(N, -1)
    torch.testing.assert_close(got, brute_force(layer, x, kind), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["grouped", "loop"])
@pytest.mark.parametrize("unit", ["linear", "ffn"])
def test_ce_without_compressed_experts_is_moe_on_the_same_router(impl, unit):
    spec = Spec(variant="ce", n_ce=0, num_experts=6, top_k=3, impl=impl, expert_unit=unit, **TINY)
    model, inputs = build_model(spec).eval(), make_inputs(spec)
    with torch.no_grad():
        ce = model(*inputs)
        with layers_as(model, "moe", impl):
            moe = model(*inputs)
    torch.testing.assert_close(ce, moe, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["swiglu", "ffn", "linear"])
def test_fresh_ce_is_top_m_routing_with_unrenormalised_weights(kind):
    # vectors at ones: the aux experts vanish and the main ones keep their raw probabilities
    layer = ce_layer(E=8, k=4, n_ce=3, kind=kind, init="ones", bias=True)
    top_m = Router(8, 8, top_k=1, gates="softmax_topk")  # softmax over all 8, top-1, no renorm
    top_m.load_state_dict(layer.router.state_dict())
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), TokenMoE(layer.experts, top_m, "loop")(x))
        # and it is not top-k: the fidelity figure sees the dropped experts
        assert rel_l2_error(layer, x) > 1e-3


def test_loop_and_grouped_agree_with_trained_like_vectors():
    spec = Spec(variant="ce", num_experts=6, top_k=4, ce_init="random", expert_unit="ffn", **TINY)
    model, inputs = build_model(spec).eval(), make_inputs(spec)
    with torch.no_grad():
        grouped = model(*inputs)
        with layers_as(model, "ce", "loop"):
            loop = model(*inputs)
    torch.testing.assert_close(loop, grouped, rtol=1e-5, atol=1e-6)


def test_aux_weights_are_renormalised_over_the_aux_set():
    # all vectors 2: the average is exactly 2 for every token only if the aux weights sum to one
    layer = ce_layer(E=6, k=4, n_ce=2, kind="swiglu", init="ones")
    x = torch.randn(5, 8)
    with torch.no_grad():
        base = layer(x.view(1, 5, 8)).view(5, -1)
        layer.vectors.weight.fill_(2.0)
        doubled = layer(x.view(1, 5, 8)).view(5, -1)
    assert not torch.allclose(doubled, base)
    twos = torch.full((layer.vectors.weight.shape[1],), 2.0)
    torch.testing.assert_close(doubled, brute_force(layer, x, "swiglu", vector=twos))


def test_vectors_have_the_expert_width_and_count_as_active_parameters():
    d, f, E, k, n_ce = 8, 20, 6, 4, 3  # f > d: the paper's code could not slice e2 from d
    layer = ce_layer(E, k, n_ce, d=d, d_ff=f, kind="swiglu")
    assert layer.vectors.weight.shape == (E, 2 * d + f)  # e1, e3 (hidden), e2 (expert width)
    expert = 2 * f * d + f * d  # gate | up, down; no bias
    assert layer.params_active() == E * d + (k - n_ce) * expert + n_ce * (2 * d + f)
    plain = ce_layer(E, k, n_ce, d=d, d_ff=f, kind="ffn")
    assert plain.vectors.weight.shape == (E, d + f)
    assert ce_layer(E, k, n_ce, d=d, d_ff=f, kind="linear").vectors.weight.shape == (E, d)


def test_fidelity_is_zero_without_compression_and_pools_over_blocks():
    spec = Spec(variant="ce", num_experts=6, top_k=4, n_ce=0, expert_unit="ffn", **TINY)
    model, inputs = build_model(spec).eval(), make_inputs(spec)
    assert model_rel_l2_error(model, *inputs) == 0.0
    spec = spec.replace(n_ce=2)
    model = build_model(spec).eval()
    layer = sparse_layers(model)[0]
    assert model_rel_l2_error(model, *inputs) == pytest.approx(rel_l2_error(layer, inputs[0]))
    assert model_rel_l2_error(build_model(spec.replace(variant="moe")), *inputs) is None


def test_ce_refuses_a_router_that_renormalises():
    layer = ce_layer()
    with pytest.raises(ValueError, match="softmax-then-top-k"):
        CompressedExperts(layer.experts, Router(8, 6, 4), "grouped", n_ce=2)


def test_bfloat16_runs():
    spec = Spec(variant="ce", num_experts=4, top_k=2, dtype="bfloat16", expert_unit="ffn",
                ce_init="random", **TINY)
    y = build_model(spec)(*make_inputs(spec))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_only_the_aux_experts_vectors_get_gradients():
    layer = ce_layer(E=8, k=4, n_ce=2, kind="swiglu").train()
    x = torch.randn(1, 3, 8)
    layer(x).pow(2).sum().backward()
    aux = layer.router(x.view(3, 8)).top_k_index[:, 2:].unique()
    touched = (layer.vectors.weight.grad.abs().sum(dim=1) > 0).nonzero().flatten()
    assert torch.equal(touched, aux.sort().values)
