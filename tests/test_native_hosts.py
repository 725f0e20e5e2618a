"""Native MoE hosts (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3, OLMoE, Phi-3.5-MoE): full size
on the meta device for counts, scaled down for forward passes, every variant, offline."""

import pytest
import torch
from meo_profile.models import Spec, SpecError, build_model, make_inputs, sparse_layers
from meo_profile.models.catalog import host_shape, router_gates
from meo_profile.models.discover import find_moe_blocks
from meo_profile.models.native import NAMED_ROUTER_GATES, NativeMoE, WithSharedExperts, host_config
from meo_profile.models.native_configs import PUBLISHED

from meo_profile.measure import analytic
from meo_profile.measure.counting import count, disagreements
from meo_profile.measure.fvcore_count import count_fvcore, inactive_params
from meo_profile.measure.phase_work import phase_bytes
from meo_profile.measure.run import measure

HOSTS = tuple(PUBLISHED)
# Scaled down: head counts stay the model's, so d_model must split into even heads where the
# config has no explicit head width (Qwen2-MoE: 28 heads).
WIDTH = {"mixtral": 64, "qwen2-moe": 56, "qwen3-moe": 64, "deepseek-v3": 64, "olmoe": 32, "phimoe": 64}
SMALL = dict(d_ff=32, layers=2, seq_len=8, batch_size=2)


def small(host: str, variant: str, **kw) -> Spec:
    routing = {} if variant == "moe" else dict(num_experts=8, top_k=2)
    return Spec(host=host, variant=variant, d_model=WIDTH[host], **{**SMALL, **routing, **kw})


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("host", HOSTS)
def test_full_size_parameters_equal_the_closed_form_and_the_model_card(host):
    spec = Spec(host=host, variant="moe", device="meta")
    model = build_model(spec)  # the transformers model itself: its own blocks are kept
    closed = analytic.count(spec)
    assert params(model) == closed.params_total
    assert params(model) - inactive_params(model) == closed.params_active
    card = PUBLISHED[host]  # model cards round: 46.7B, 57B, 30.5B, 671B, 6.9B, 41.9B
    assert closed.params_total == pytest.approx(card.params_total, rel=0.01)
    assert closed.params_active == pytest.approx(card.params_active, rel=0.03)


@pytest.mark.parametrize("host", HOSTS)
def test_discovery_reads_each_familys_blocks(host):
    spec = small(host, "moe", layers=3)
    model = build_model(spec.replace(variant="moe"))
    native = [m for m in model.modules() if isinstance(m, NativeMoE)]
    config = host_config(spec)
    dense_first = getattr(config, "first_k_dense_replace", 0) or 0
    assert len(native) == spec.layers - dense_first  # DeepSeek-V3 keeps one dense layer here
    blocks = find_moe_blocks(model.model)  # the wrapped blocks are found again, read afresh
    b = blocks[0]
    assert (b.num_experts, b.top_k, b.hidden, b.expert_width, b.gated) == (
        spec.num_experts, spec.top_k, spec.d_model, spec.d_ff, True)
    assert b.router_gates == NAMED_ROUTER_GATES[host] == host_shape(host).router_gates
    shared = {"qwen2-moe": (["shared_expert"], "shared_expert_gate"),
              "deepseek-v3": (["shared_experts"], None)}.get(host, ([], None))
    assert (b.shared, b.shared_gate) == shared


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("variant", ["moe", "meo", "ce", "dense"])
def test_fvcore_equals_the_closed_form_on_small_configs(host, variant):
    spec = small(host, variant, **({"top_k": 4} if variant == "ce" else {}))
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


@pytest.mark.parametrize("spec", [
    Spec(host="qwen2-moe", variant="moe", impl="hf-batched_mm", d_model=56, **SMALL),
    Spec(host="phimoe", variant="moe", impl="hf-eager", d_model=64, **SMALL),  # the loop, on cpu
    Spec(host="deepseek-v3", variant="meo-token", num_experts=8, top_k=2, d_model=64, **SMALL),
    Spec(host="qwen2-moe", variant="moe-seq", num_experts=8, top_k=2, d_model=56, **SMALL),
    Spec(host="olmoe", variant="meo", expert_unit="linear", num_experts=8, top_k=2, d_model=32, **SMALL),
    Spec(host="deepseek-v3", variant="ce", expert_unit="linear", num_experts=8, top_k=4, d_model=64, **SMALL),
], ids=lambda s: f"{s.host}-{s.variant}-{s.impl}-{s.expert_unit}")
def test_fvcore_equals_the_closed_form_for_other_implementations_and_units(spec):
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


@pytest.mark.parametrize("host", HOSTS)
def test_every_variant_runs_scaled_down_offline(host, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vocab = host_shape(host).vocab
    for variant in ("dense", "moe", "moe-seq", "meo", "meo-token", "ce", "xmoe"):
        spec = small(host, variant)
        model = build_model(spec).eval()
        swapped = [m for m in model.modules() if isinstance(m, WithSharedExperts)]
        own = [m for m in model.modules() if isinstance(m, NativeMoE)]
        if variant == "moe":
            assert own and not swapped and not sparse_layers(model)
        else:  # every sparse block swapped, its routed experts the variant's
            assert swapped and not own
            assert len(sparse_layers(model)) == (0 if variant == "dense" else len(swapped))
        with torch.no_grad():
            logits = model(*make_inputs(spec))
        assert logits.shape == (2, 8, vocab) and torch.isfinite(logits).all()


def test_moe_is_the_unmodified_transformers_model():
    from transformers import AutoModelForCausalLM

    spec = small("qwen2-moe", "moe")
    torch.manual_seed(spec.seed)
    reference = AutoModelForCausalLM.from_config(host_config(spec)).eval()
    with torch.no_grad():
        want = reference(input_ids=make_inputs(spec)[0], use_cache=False).logits
        got = build_model(spec).eval()(*make_inputs(spec))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("host", ["qwen2-moe", "deepseek-v3"])
def test_swapped_variants_keep_the_shared_experts_and_their_gate(host):
    moe, meo = build_model(small(host, "moe")), build_model(small(host, "meo"))
    own = next(m for m in moe.modules() if isinstance(m, NativeMoE)).block
    swapped = next(m for m in meo.modules() if isinstance(m, WithSharedExperts))
    shared_attr = "shared_expert" if host == "qwen2-moe" else "shared_experts"
    assert params(swapped.shared[shared_attr]) == params(getattr(own, shared_attr)) > 0
    assert (swapped.shared_gate is not None) == (host == "qwen2-moe")


def test_a_block_that_combines_shared_experts_otherwise_is_refused():
    from meo_profile.models.native import check_shared_combine
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    class SharedTwice(Qwen2MoeSparseMoeBlock):  # a family that adds its shared expert again
        def forward(self, h):
            return super().forward(h) + self.shared_expert(h)

    model = build_model(small("qwen2-moe", "moe")).model
    blocks = find_moe_blocks(model)
    check_shared_combine("qwen2-moe", blocks)  # the real block passes
    blocks[0].block.__class__ = SharedTwice
    with pytest.raises(SpecError, match="combines its shared experts otherwise"):
        check_shared_combine("qwen2-moe", blocks)


def test_routers_are_recorded_as_they_ran():
    assert router_gates(small("deepseek-v3", "moe")) == {
        "router_gates": "sigmoid_topk_renorm+grouped+bias*2.5",
        "host_router_gates": "sigmoid_topk_renorm+grouped+bias*2.5"}
    assert router_gates(small("phimoe", "meo"))["router_gates"] == "topk_softmax"
    assert router_gates(small("phimoe", "xmoe"))["router_gates"] == "threshold"
    assert router_gates(Spec(host="bert-base", variant="ce")) == {
        "router_gates": "softmax_topk", "host_router_gates": None}


@pytest.mark.parametrize("kwargs, flag, needle", [
    (dict(host="phimoe", variant="moe", top_k=4), "--top-k", "picks 2 experts"),
    (dict(host="mixtral", variant="moe", impl="grouped"), "--impl", "hf-grouped_mm"),
    (dict(host="qwen2-moe", variant="meo", d_model=64), "--d-model", "28 heads"),
    (dict(host="nope"), "--host", "hf:PATH"),
])
def test_bad_native_configurations_name_their_flag(kwargs, flag, needle):
    with pytest.raises(SpecError) as err:
        Spec(**kwargs)
    assert str(err.value).startswith(flag) and needle in str(err.value)


def test_defaults_are_the_published_model_and_its_own_block():
    spec = Spec(host="qwen3-moe", variant="moe")
    assert (spec.d_model, spec.d_ff, spec.layers, spec.num_experts, spec.top_k, spec.impl_by_rule,
            spec.expert_unit) == (2048, 768, 48, 128, 8, "hf-grouped_mm", "ffn")


def test_deepseek_regroups_its_router_for_other_expert_counts():
    config = host_config(small("deepseek-v3", "moe", num_experts=12, top_k=4, layers=4))
    # 12 experts: 6 groups of 2 (a group scores by its best two); the groups searched hold >= k
    assert (config.n_group, config.first_k_dense_replace) == (6, 3)
    assert config.topk_group * 12 // config.n_group >= 4


@pytest.mark.slow
def test_xmoe_at_full_size_is_refused_in_one_line():
    with pytest.raises(SpecError, match="depends on routing.*scale the host down") as err:
        count(Spec(host="deepseek-v3", variant="xmoe"))
    assert "\n" not in str(err.value)


def test_latency_at_full_size_is_refused_before_anything_is_allocated():
    result = measure(Spec(host="deepseek-v3", variant="moe"), ("latency",))
    assert result.status == "oom" and "GiB (weights 2499.8 GiB" in result.error


def test_the_bound_reads_only_the_experts_tokens_can_touch():
    spec = Spec(host="olmoe", variant="moe", batch_size=1, seq_len=1)  # one token: k of E experts
    model = build_model(spec, device="meta")
    blocks = [m for m in model.modules() if isinstance(m, NativeMoE)]
    expert = sum(p.numel() for p in blocks[0].experts.parameters()) // spec.num_experts * 4
    others = (params(model) - sum(params(b.experts) for b in blocks)) * 4
    activations = sum(phase_bytes(spec, model).values()) - others - len(blocks) * spec.top_k * expert
    assert 0 < activations < expert  # k experts of 64 read per layer, and one token's activations
