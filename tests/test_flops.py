"""FLOP counts are exact: fvcore (with our handles) and the closed form agree to the integer."""

import dataclasses
import itertools
import json
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from meo_profile.models import Spec, build_model, make_inputs
from meo_profile.models.catalog import host_shape
from meo_profile.models.native_configs import own_sizes

from meo_profile.measure import analytic, fvcore_count
from meo_profile.measure.counting import count, disagreements
from meo_profile.measure.fvcore_count import count_fvcore
from meo_profile.measure.preflight import DoesNotFit, check_fits

VARIANTS = ["dense", "moe", "moe-seq", "meo", "meo-token", "ce"]
GRID = list(itertools.product(VARIANTS, [(4, 1), (8, 2), (6, 6)], [(1, 16), (3, 7)]))


@pytest.mark.parametrize("variant, ek, bt", GRID)
@pytest.mark.parametrize("unit", ["linear", "ffn"])
def test_layer_fvcore_equals_closed_form(variant, ek, bt, unit):
    (E, k), (B, T) = ek, bt
    spec = Spec(host="layer", variant=variant, num_experts=E, top_k=k, batch_size=B, seq_len=T,
                d_model=40, d_ff=72, expert_unit=unit)
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


@pytest.mark.parametrize("variant, ek, bt", GRID[::2])
def test_bert_small_fvcore_equals_closed_form(variant, ek, bt):
    (E, k), (B, T) = ek, bt
    spec = Spec(host="bert-small", variant=variant, num_experts=E, top_k=k, batch_size=B,
                seq_len=T)
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


@pytest.mark.parametrize("impl", ["loop", "grouped"])
def test_data_dependent_implementations_count_the_same_on_real_tensors(impl):
    spec = Spec(variant="moe", impl=impl, num_experts=5, top_k=2, d_model=24, d_ff=40)
    counts = count_fvcore(spec)
    assert counts.count_device == ("cpu" if impl == "loop" else "meta")
    assert disagreements(counts, analytic.count(spec)) == []


@pytest.mark.parametrize("variant, impl", [("meo", "fused"), ("meo-token", "fused"),
                                           ("meo", "dense"), ("moe-seq", "loop")])
@pytest.mark.parametrize("unit", ["linear", "ffn"])
def test_every_merge_and_dispatch_counts_as_the_closed_form_says(variant, impl, unit):
    """The fused merge is one operator (meo_profile::fused_merge) with its own handle: B*k
    multiply-adds per merged element, as gather; on the meta device, through its shape function."""
    spec = Spec(variant=variant, impl=impl, num_experts=6, top_k=3, batch_size=3, seq_len=5,
                d_model=24, d_ff=40, expert_unit=unit)
    counts = count_fvcore(spec)
    assert disagreements(counts, analytic.count(spec)) == []
    if impl == "fused":
        assert counts.count_device == "meta" and counts.macs_by_operator.get("fused_merge")
        gather = count_fvcore(spec.replace(impl="gather"))
        assert counts.macs_by_part["merge"] == gather.macs_by_part["merge"]


def test_transformers_experts_kernels_count_alike_and_as_the_closed_form():
    spec = Spec(host="olmoe", variant="moe", layers=1, d_model=64, d_ff=32, num_experts=4,
                top_k=2, seq_len=4, batch_size=2)
    closed_form = analytic.count(spec).macs_by_part
    for impl in ("hf-grouped_mm", "hf-batched_mm", "hf-eager"):
        assert count_fvcore(spec.replace(impl=impl)).macs_by_part == closed_form, impl


@pytest.mark.parametrize("host", ["gpt2", "t5-small", "bart-base"])
@pytest.mark.parametrize("variant", ["dense", "moe", "meo"])
def test_other_hosts_agree_too(host, variant):
    spec = Spec(host=host, variant=variant, num_experts=4, top_k=2, seq_len=9, batch_size=2,
                layers=2)
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


@pytest.mark.parametrize("k, T", [(1, 8), (2, 16), (4, 128), (8, 33)])
def test_meo_over_vanilla_for_one_moe_linear_is_one_over_k_plus_one_over_L(k, T):
    # one MoE linear without bias terms: meo = N*P + B*k*P, vanilla = N*k*P
    B, d, f = 2, 16, 24
    meo = count_fvcore(Spec(variant="meo", impl="gather", num_experts=8, top_k=k, seq_len=T,
                            batch_size=B, d_model=d, d_ff=f))
    moe = count_fvcore(Spec(variant="moe-seq", num_experts=8, top_k=k, seq_len=T, batch_size=B,
                            d_model=d, d_ff=f))
    bias_merge = B * k * (f + d)  # the merge also folds the biases of both linears
    ratio = Fraction(meo.macs_by_part["experts"] + meo.macs_by_part["merge"] - bias_merge,
                     moe.macs_by_part["experts"])
    assert ratio == Fraction(1, k) + Fraction(1, T)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("host", ["layer", "bert-small", "gpt2", "t5-small", "bart-base"])
def test_parameter_counts_match_the_built_model(host, variant):
    spec = Spec(host=host, variant=variant, num_experts=4, top_k=2, layers=2 if host != "layer" else None)
    model = build_model(spec, device="meta")
    assert analytic.count(spec).params_total == sum(p.numel() for p in model.parameters())


def test_active_parameters_exclude_unselected_experts():
    spec = Spec(variant="moe", num_experts=8, top_k=2, d_model=16, d_ff=32)
    counts = analytic.count(spec)
    per_expert_linear_pair = (16 * 32 + 32) + (32 * 16 + 16)
    assert counts.params_total - counts.params_active == 6 * per_expert_linear_pair


def test_skipped_ops_are_listed_not_lost():
    counts = count_fvcore(Spec(variant="moe", num_experts=4, top_k=2, d_model=16, d_ff=32))
    for op in ("aten::softmax", "aten::topk", "aten::gelu", "aten::index"):
        assert counts.unsupported_ops.get(op, 0) > 0, op


def test_paper_headline_reproduces():
    """MEO paper: 72.0 GFLOPs (vanilla) vs 28.6-28.9 (MEO); BERT-base, L=128, B=1, k=4."""
    common = dict(host="bert-base", num_experts=32, top_k=4, seq_len=128, batch_size=1)
    moe = count(Spec(variant="moe", **common))
    meo = count(Spec(variant="meo", **common))
    without_router = moe.flops - 2 * moe.macs_by_part["router"]
    assert abs(without_router / 71.99e9 - 1) < 0.002  # the paper's figure has no router term
    assert 28.5e9 <= meo.flops <= 29.0e9


def test_bert_large_with_32_experts_counts_without_materialising():
    spec = Spec(host="bert-large", variant="moe", num_experts=32, top_k=4, seq_len=128, batch_size=1)
    counts = count_fvcore(spec)
    assert counts.count_device == "meta"
    assert counts.params_total * 4 > 24 * 2**30  # ~26 GB of float32 weights: more than this RAM
    assert counts.macs == analytic.count(spec).macs


def test_preflight_refuses_what_does_not_fit():
    spec = Spec(host="bert-base", variant="moe", num_experts=32)
    with pytest.raises(DoesNotFit, match="GiB"):
        check_fits(spec, limit_bytes=2**30)


def test_flops_json_prints_one_record_with_units():
    proc = subprocess.run([sys.executable, "-m", "cli", "flops", "--variant", "meo", "--experts", "4",
                           "--top-k", "2", "--d-model", "32", "--d-ff", "64", "--source", "both",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["flops"] == 2 * record["macs"] == 2 * record["macs_analytic"]
    assert record["flops_source"] == "fvcore" and record["sources_agree"] is True
    assert record["macs"] == sum(record["macs_by_part"].values())


def test_counts_do_not_depend_on_dtype():
    spec = Spec(variant="moe-seq", num_experts=4, top_k=2, d_model=16, d_ff=32)
    assert count_fvcore(spec).macs == count_fvcore(spec.replace(dtype="bfloat16")).macs
    assert torch.get_default_dtype() == torch.float32  # counting leaves global state alone


def test_compressed_experts_cut_active_parameters_by_the_aux_experts():
    moe = analytic.count(Spec(variant="moe", num_experts=8, top_k=4, d_model=16, d_ff=32))
    ce = count_fvcore(Spec(variant="ce", n_ce=2, num_experts=8, top_k=4, d_model=16, d_ff=32))
    per_expert = (16 * 32 + 32) + (32 * 16 + 16)  # one expert of each of the two MoE linears
    vectors = 16 + 32  # one input-scaling vector per MoE linear
    assert moe.params_active - ce.params_active == 2 * per_expert - 2 * vectors


def test_xmoe_records_the_routing_it_counted():
    spec = Spec(variant="xmoe", num_experts=8, d_model=16, d_ff=32, router_scale=8.0, threshold=0.9)
    counts = count_fvcore(spec)
    mean = counts.routing["experts_per_token_mean"]
    assert counts.count_device == "cpu" and 1 <= mean <= 8
    assert counts.routing["experts_per_token_max"] >= counts.routing["experts_per_token_p90"] >= 1
    # dropless: every chosen (token, expert) pair runs through one up and one down matrix
    kept_pairs = round(mean * spec.batch_size * spec.seq_len)
    assert counts.macs_by_part["experts"] == kept_pairs * 2 * 16 * 32


# ------------------------------------------------------------------ stacks of blocks
STACKED = [(host, variant, impl) for host in ("bert-small", "gpt2", "t5-small", "bart-base",
                                               "olmoe", "phimoe")
           for variant, impl in (("dense", "auto"), ("moe", "auto"), ("meo", "gather"),
                                 ("ce", "grouped"))]
STACKED += [(host, "moe", "auto") for host in ("mixtral", "qwen2-moe", "qwen3-moe")]


@pytest.mark.parametrize("host, variant, impl", STACKED)
def test_a_stack_counted_from_one_short_trace_equals_the_full_trace(host, variant, impl):
    """Every field of the count, per-module breakdown included, to the integer."""
    shape = host_shape(host)
    per_stack = 2 if shape.seq2seq else 1
    # a width each host's attention takes: a native host keeps its head count (rotary: even widths)
    d_model = 2 * own_sizes(host).heads if shape.native else 4 * shape.heads
    spec = Spec(host=host, variant=variant, impl=impl, d_model=d_model, d_ff=24,
                layers=4 * per_stack, num_experts=4, top_k=2, seq_len=6, batch_size=2)
    assert fvcore_count.stacked(spec)
    fast, full = fvcore_count.count_on_meta(spec), fvcore_count._count_on(spec, "meta")
    assert dataclasses.asdict(fast) == dataclasses.asdict(full)


def test_meta_counts_are_shared_across_dtype_device_and_seed_and_handed_out_as_copies():
    spec = Spec(host="bert-small", variant="meo", num_experts=4, top_k=2, seq_len=8,
                batch_size=1, layers=3)
    first = fvcore_count.count_on_meta(spec)
    first.macs_by_part["experts"] = -1  # a caller's copy: the cached count is untouched
    again = fvcore_count.count_on_meta(spec.replace(dtype="bfloat16", seed=7))
    assert again.macs_by_part["experts"] > 0 and again.macs == first.macs
    assert not fvcore_count.stacked(spec.replace(layers=1))  # as short as the trace
    # T5's first block differs from the rest: its trace holds two blocks per stack
    assert not fvcore_count.stacked(Spec(host="t5-small", variant="meo", layers=4))
    assert fvcore_count.stacked(Spec(host="t5-small", variant="meo", layers=6))


def test_a_count_on_real_tensors_traces_the_model_it_is_handed():
    """A sweep that times a data-dependent implementation hands its built model to the counter:
    the count is the same as from a fresh build, and is of the model handed over (XMoE's
    routing, hence its MACs, follows the weights; another seed's weights count differently)."""
    spec = Spec(variant="xmoe", num_experts=8, d_model=16, d_ff=32, router_scale=8.0,
                threshold=0.9, seq_len=32, batch_size=4)
    fresh = count_fvcore(spec)
    handed = count_fvcore(spec, built=(build_model(spec), make_inputs(spec)))
    assert dataclasses.asdict(handed) == dataclasses.asdict(fresh)
    other = spec.replace(seed=1)
    other_built = count_fvcore(spec, built=(build_model(other), make_inputs(other)))
    assert other_built.routing != fresh.routing
    assert other_built.macs == count_fvcore(other).macs != fresh.macs
    # a model in train mode is not what a count describes: the counter builds its own
    trained = spec.replace(mode="train", seed=1)
    assert count_fvcore(spec, built=(build_model(trained), make_inputs(trained))).macs == fresh.macs
