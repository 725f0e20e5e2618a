"""Native MoE hosts (OLMoE, Phi-3.5-MoE): full size on the meta device, scaled down to run."""

import pytest
import torch

from models import Spec, SpecError, build_model, make_inputs, sparse_layers
from models.build import layers_as
from models.hosts import HOSTS, FFNBlock

pytestmark = pytest.mark.slow  # builds 7B- and 42B-parameter shapes (on meta: no memory)


def olmoe_params(d, f, L, E, V, heads) -> dict[str, int]:
    """OlmoeForCausalLM from its config: untied embeddings, RMSNorms (q/k norms included),
    bias-free attention with as many key/value heads as heads, SwiGLU experts."""
    attention = 4 * d * d + 2 * d  # q, k, v, o; q_norm, k_norm
    per_layer = attention + 2 * d  # + input and post-attention RMSNorm
    return {"other": 2 * V * d + d + L * per_layer, "router": d * E,
            "expert": 3 * d * f, "L": L, "E": E}


def phimoe_params(d, f, L, E, V, heads, kv_heads=8) -> dict[str, int]:
    """PhimoeForCausalLM as released: biased q/k/v/o and LM head, LayerNorms with bias."""
    hd = d // heads
    attention = (d * d + d) * 2 + (d * kv_heads * hd + kv_heads * hd) * 2  # q, o; k, v
    per_layer = attention + 2 * 2 * d
    return {"other": V * d + V * d + V + 2 * d + L * per_layer, "router": d * E,
            "expert": 3 * d * f, "L": L, "E": E}


FORMULA = {"olmoe": olmoe_params, "phimoe": phimoe_params}


def expected(host: str) -> dict[str, int]:
    s = HOSTS[host]
    return FORMULA[host](s.d_model, s.d_ff, s.layers, s.experts, s.vocab, s.heads)


def total_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("host", ["olmoe", "phimoe"])
def test_full_size_moe_has_the_native_models_parameters(host):
    spec = Spec(host=host, variant="moe", device="meta")
    assert (spec.num_experts, spec.top_k, spec.expert_unit) == (HOSTS[host].experts,
                                                                HOSTS[host].top_k, "ffn")
    model = build_model(spec)
    p = expected(host)
    E, k, L = p["E"], spec.top_k, p["L"]
    assert total_params(model) == p["other"] + L * (p["router"] + E * p["expert"])
    assert total_params(model) == total_params(native(host))  # the transformers model itself
    active = p["other"] + L * (p["router"] + k * p["expert"])
    layers = sparse_layers(model)
    assert len(layers) == L and all(layer.experts.expert_numel == p["expert"] for layer in layers)
    # the model cards: OLMoE-1B-7B 6.9B total, 1.3B active; Phi-3.5-MoE 41.9B total, 6.6B active
    card = {"olmoe": (6.9e9, 1.3e9), "phimoe": (41.9e9, 6.6e9)}[host]
    assert total_params(model) == pytest.approx(card[0], rel=0.01)
    assert active == pytest.approx(card[1], rel=0.02)


def native(host: str):
    """The unmodified transformers model of the host's full shape, on meta."""
    from transformers import OlmoeConfig, OlmoeForCausalLM, PhimoeConfig, PhimoeForCausalLM

    s = HOSTS[host]
    common = dict(vocab_size=s.vocab, hidden_size=s.d_model, intermediate_size=s.d_ff,
                  num_hidden_layers=s.layers, num_attention_heads=s.heads,
                  num_experts_per_tok=s.top_k)
    with torch.device("meta"):
        if host == "olmoe":
            return OlmoeForCausalLM(OlmoeConfig(num_experts=s.experts, **common))
        return PhimoeForCausalLM(PhimoeConfig(num_local_experts=s.experts, attention_bias=True,
                                              lm_head_bias=True, **common))


@pytest.mark.parametrize("host, n_ce", [("olmoe", 4), ("phimoe", 1)])
def test_full_size_ce_adds_vectors_and_cuts_active_parameters(host, n_ce):
    spec = Spec(host=host, variant="ce", n_ce=n_ce, device="meta")
    model = build_model(spec)
    p, s = expected(host), HOSTS[host]
    E, k, L, V = p["E"], spec.top_k, p["L"], 2 * s.d_model + s.d_ff  # V: e1, e3 (d) and e2 (f)
    assert total_params(model) == p["other"] + L * (p["router"] + E * p["expert"] + E * V)
    active = total_params(model) - sum(total_params(layer) for layer in sparse_layers(model)) \
        + sum(layer.params_active() for layer in sparse_layers(model))
    assert active == p["other"] + L * (p["router"] + (k - n_ce) * p["expert"] + n_ce * V)
    moe_active = p["other"] + L * (p["router"] + k * p["expert"])
    if host == "olmoe":  # the paper's claim: more than 30% fewer active parameters
        assert 1 - active / moe_active > 0.30


@pytest.mark.parametrize("host", ["olmoe", "phimoe"])
def test_dense_is_one_experts_swiglu_ffn(host):
    model = build_model(Spec(host=host, variant="dense", device="meta"))
    p, s = expected(host), HOSTS[host]
    assert total_params(model) == p["other"] + p["L"] * p["expert"]
    ffn = model.model.model.layers[0].mlp
    assert isinstance(ffn, FFNBlock) and ffn.up.out_features == 2 * s.d_ff


SMALL = dict(layers=2, d_ff=32, seq_len=6, batch_size=2)
SMALL_WIDTH = {"olmoe": 32, "phimoe": 64}  # head width 2 (16 and 32 heads)


@pytest.mark.parametrize("host", ["olmoe", "phimoe"])
@pytest.mark.parametrize("variant", ["dense", "moe", "meo", "ce", "xmoe"])
def test_scaled_down_forward_runs_offline(host, variant, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = Spec(host=host, variant=variant, d_model=SMALL_WIDTH[host], **SMALL)
    model = build_model(spec)
    assert len(sparse_layers(model)) == (0 if variant == "dense" else spec.layers)
    with torch.no_grad():
        logits = model(*make_inputs(spec))
    assert logits.shape == (2, 6, HOSTS[host].vocab) and torch.isfinite(logits).all()


def test_ce_without_compression_is_moe_on_a_swiglu_host():
    spec = Spec(host="olmoe", variant="ce", n_ce=0, num_experts=8, top_k=3, d_model=32, **SMALL)
    model, inputs = build_model(spec).eval(), make_inputs(spec)
    with torch.no_grad():
        ce = model(*inputs)
        with layers_as(model, "moe", "grouped"):
            moe = model(*inputs)
    torch.testing.assert_close(ce, moe, rtol=1e-5, atol=1e-6)


def test_linear_expert_unit_splits_the_fused_gate_up_projection():
    spec = Spec(host="olmoe", variant="moe", expert_unit="linear", num_experts=4, top_k=2,
                d_model=32, **SMALL)
    model = build_model(spec)
    up, down = sparse_layers(model)[:2]
    assert up.experts.dims == [32, 64] and down.experts.dims == [32, 32]  # d -> 2 d_ff, d_ff -> d
    with torch.no_grad():
        assert torch.isfinite(model(*make_inputs(spec))).all()


def test_explicit_experts_and_top_k_override_the_hosts():
    spec = Spec(host="olmoe", num_experts=8, top_k=2, expert_unit="linear")
    assert (spec.num_experts, spec.top_k, spec.expert_unit) == (8, 2, "linear")
    assert (Spec().num_experts, Spec().top_k, Spec().expert_unit) == (16, 4, "linear")


def test_rotary_hosts_need_an_even_head_width():
    with pytest.raises(SpecError, match="^--d-model"):
        Spec(host="phimoe", d_model=32)  # 32 heads of width 1
