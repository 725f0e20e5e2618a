"""Decoding: the state a step reads (KV cache, running means, merged experts kept), what a step
computes against a prefill of the same tokens, what it costs in closed form against fvcore, and
what it holds in memory."""

from __future__ import annotations

import json

import pytest
import torch
from meo_profile.models import Spec, SpecError, build_model
from meo_profile.models.decode import (
    Decoding,
    decode_inputs,
    kv_bytes_per_position,
    merged_cache_bytes,
)
from typer.testing import CliRunner

from cli import app
from meo_profile.measure import analytic
from meo_profile.measure.counting import disagreements
from meo_profile.measure.fvcore_count import count_fvcore
from meo_profile.measure.phase_work import phase_bytes
from meo_profile.measure.preflight import estimate
from meo_profile.measure.workload import Workload
from meo_profile.sweep.grid import Block

LAYER = dict(d_model=32, d_ff=64, num_experts=4, top_k=2, batch_size=3, seq_len=8)
GPT2 = dict(d_model=48, d_ff=96, num_experts=4, top_k=2, batch_size=2, seq_len=6, layers=2)
MOE_HOST = dict(d_model=64, d_ff=32, num_experts=4, top_k=2, batch_size=2, seq_len=6, layers=2)


def _extended_prefill_last(spec: Spec, model, prompt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A plain prefill over the prompt and the new token: its output at the new token."""
    return model(torch.cat([prompt, x], dim=1))[:, -1:]


@torch.no_grad()
def test_a_kept_merged_expert_is_the_one_prefill_merges():
    """With the new token at the prompt's mean, a prefill over prompt + token routes each
    sequence exactly as the prompt did: its output there is what the kept expert gives."""
    spec = Spec(variant="meo", expert_unit="ffn", workload="decode", merge_reuse="sequence", **LAYER)
    plain = build_model(spec)  # the same weights (seeded), without a decoding state
    tokens = decode_inputs(spec)
    x = tokens.prompt.mean(dim=1, keepdim=True)  # (B, 1, d): the sequence's mean is unchanged
    dec = Decoding(build_model(spec), spec)
    dec.prompt(tokens.prompt)
    got = dec.step(x)
    torch.testing.assert_close(got, _extended_prefill_last(spec, plain, tokens.prompt, x),
                               rtol=1e-5, atol=1e-5)
    other = tokens.steps[0]  # any other token: the routing is kept, not the prefill's
    assert not torch.allclose(dec.step(other), _extended_prefill_last(spec, plain, tokens.prompt, other))


@torch.no_grad()
@pytest.mark.parametrize("variant", ["meo", "moe-seq"])
def test_a_step_that_routes_again_is_a_prefill_over_the_extended_sequence(variant):
    spec = Spec(variant=variant, expert_unit="ffn", workload="generate:2", **LAYER)
    plain = build_model(spec)  # the same weights (seeded), without a decoding state
    tokens = decode_inputs(spec)
    dec = Decoding(build_model(spec), spec)
    dec.prompt(tokens.prompt)
    seen = tokens.prompt
    for x in tokens.steps:
        got = dec.step(x)
        torch.testing.assert_close(got, _extended_prefill_last(spec, plain, seen, x), rtol=1e-5, atol=1e-5)
        seen = torch.cat([seen, x], dim=1)


@torch.no_grad()
def test_a_causal_host_steps_on_its_kv_cache_as_a_full_forward_would():
    spec = Spec(host="gpt2", variant="moe", workload="decode", context=5, **GPT2)
    work = Workload.build(spec)
    prompt, x = work.inputs
    want = work.model(torch.cat([prompt, x], dim=1))[:, -1:]
    first, again = work.step(), work.step()  # the same step each call: the cache rewinds
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(first, again) and work.decoding.length == 5


def test_the_kept_merged_experts_are_b_experts_per_moe_layer():
    spec = Spec(host="gpt2", variant="meo", workload="decode", merge_reuse="sequence", **GPT2)
    work = Workload.build(spec)
    # linear experts: both FFN linears of each block are MoE layers, each with its own expert
    per_block = (spec.d_model * spec.d_ff + spec.d_ff) + (spec.d_ff * spec.d_model + spec.d_model)
    assert merged_cache_bytes(work.model, spec) == spec.batch_size * per_block * 4 * spec.layers
    assert work.decoding.kept_bytes == merged_cache_bytes(work.model, spec)
    assert estimate(spec).state_bytes == work.state_bytes  # the pre-flight counts what is held
    assert merged_cache_bytes(work.model, spec.replace(merge_reuse="step")) == 0
    step = Workload.build(spec.replace(merge_reuse="step"))
    assert step.decoding.kept_bytes == 0 and estimate(step.spec).state_bytes == step.state_bytes


@pytest.mark.parametrize("host, sizes", [("gpt2", GPT2), ("olmoe", MOE_HOST),
                                         ("deepseek-v3", MOE_HOST)])
def test_kv_bytes_per_position_is_the_cache_transformers_allocates(host, sizes):
    spec = Spec(host=host, variant="moe", workload="decode", context=4, **sizes)
    work = Workload.build(spec)
    assert work.decoding.cache_bytes == kv_bytes_per_position(spec) * spec.batch_size * 5
    assert estimate(spec).state_bytes == work.state_bytes


@pytest.mark.parametrize("host, sizes, variant, workload, reuse", [
    ("layer", LAYER, "moe", "decode", None),
    ("layer", LAYER, "moe-seq", "generate:3", None),
    ("layer", LAYER, "meo", "decode", "step"),
    ("layer", LAYER, "meo-token", "generate:3", "sequence"),
    ("layer", LAYER, "ce", "decode", None),
    ("gpt2", GPT2, "meo", "decode", "sequence"),
    ("gpt2", GPT2, "meo", "generate:3", "step"),
    ("gpt2", GPT2, "dense", "generate:2", None),
    ("olmoe", MOE_HOST, "moe", "generate:2", None),
    ("deepseek-v3", MOE_HOST, "meo", "decode", "step"),
    ("layer", LAYER, "smear", "generate:2", "sequence"),
    ("gpt2", GPT2, "lory", "decode", "step"),
    ("layer", {**LAYER, "segment_len": 4}, "lory", "generate:2", "sequence"),
])
def test_closed_forms_equal_fvcore_for_each_workload(host, sizes, variant, workload, reuse):
    spec = Spec(host=host, variant=variant, workload=workload, merge_reuse=reuse, **sizes)
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


def test_a_decode_step_costs_one_token_and_reuse_skips_the_merge():
    spec = Spec(variant="meo", impl="gather", workload="decode", **LAYER)  # merge_reuse: step
    P2 = 2 * spec.d_model * spec.d_ff  # both linears of one expert
    B, k = spec.batch_size, spec.top_k
    step = analytic.count(spec).macs_by_part
    assert step["experts"] == B * P2 and step["merge"] == B * k * (P2 + spec.d_ff + spec.d_model)
    kept = analytic.count(spec.replace(merge_reuse="sequence")).macs_by_part
    assert kept == {"experts": B * P2}
    gen = analytic.count(spec.replace(workload="generate:5", merge_reuse="sequence")).macs_by_part
    prefill = analytic.count(spec.replace(workload="prefill", merge_reuse=None, context=None))
    assert gen["experts"] == prefill.macs_by_part["experts"] + 5 * B * P2
    assert gen["merge"] == prefill.macs_by_part["merge"]  # merged once, on the prompt


def test_the_decode_roofline_reads_the_kept_matrices_or_merges_again():
    spec = Spec(variant="meo", impl="dense", workload="decode", merge_reuse="sequence", **LAYER)
    model = build_model(spec, device="meta")
    per_expert = 4 * (2 * spec.d_model * spec.d_ff + spec.d_ff + spec.d_model) // 2  # one linear
    B, rows = spec.batch_size, spec.batch_size * (spec.d_model + spec.d_ff) * 4
    kept = phase_bytes(spec, model)
    assert kept["experts"] == 2 * B * per_expert + 2 * rows and not kept["merge"] and not kept["router"]
    again = phase_bytes(spec.replace(merge_reuse="step"), model)  # dense merge: reads all E
    assert again["merge"] == 2 * (spec.num_experts + B) * per_expert
    assert again["experts"] == kept["experts"]


def test_generate_runs_its_prompt_and_steps_and_comes_back_empty():
    spec = Spec(host="gpt2", variant="meo", workload="generate:3", merge_reuse="sequence", **GPT2)
    work = Workload.build(spec)
    out = work.step()
    assert out.shape == (spec.batch_size, 1, 50257) and work.decoding.length == 0
    assert torch.equal(work.step(), out)  # the same generation every call
    with work.parts["decode_ms_per_step"].calls() as steps:
        assert work.decoding.length == spec.seq_len and torch.equal(steps(), out)
    assert work.decoding.length == 0 and work.parts["decode_ms_per_step"].per_call == 3
    assert work.tokens == spec.batch_size * (spec.seq_len + 3)


@pytest.mark.parametrize("fields, flag, words", [
    ({"host": "bert-small", "workload": "decode"}, "--workload", "encoder-only"),
    ({"host": "t5-small", "workload": "generate:4"}, "--workload", "encoder-decoder"),
    ({"workload": "decode", "mode": "train"}, "--mode", "inference"),
    ({"variant": "moe", "workload": "decode", "merge_reuse": "sequence"}, "--merge-reuse", "merging"),
    ({"workload": "generate:4", "context": 64}, "--context", "--seq-len"),
    ({"variant": "soft-moe", "workload": "decode"}, "--workload", "Soft MoE mixes every token"),
])
def test_what_cannot_decode_is_refused_in_one_line_saying_why(fields, flag, words):
    with pytest.raises(SpecError) as e:
        Spec(**fields)
    assert str(e.value).startswith(flag) and words in str(e.value) and "\n" not in str(e.value)


def test_a_grid_crosses_workloads_and_reuse_into_what_applies():
    block = Block({"host": ["layer", "bert-small"], "variant": ["moe", "meo"],
                   "workload": ["prefill", "decode"], "merge_reuse": ["step", "sequence"]})
    specs, impossible = block.specs()
    got = sorted((s.host, s.variant, s.workload, str(s.merge_reuse)) for s in specs)
    assert got == [("bert-small", "meo", "prefill", "None"), ("bert-small", "moe", "prefill", "None"),
                   ("layer", "meo", "decode", "sequence"), ("layer", "meo", "decode", "step"),
                   ("layer", "meo", "prefill", "None"), ("layer", "moe", "decode", "None"),
                   ("layer", "moe", "prefill", "None")]
    assert impossible == 4  # bert-small at decode: each variant x reuse


def _latency_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["latency", "--json", "--min-run-time", "0.01", "--warmup", "0",
                                      "--d-model", "32", "--d-ff", "64", "--experts", "4",
                                      "--top-k", "2", "--batch-size", "3", "--seq-len", "8", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_decode_record_says_what_merging_keeps_and_reads():
    record = _latency_json("--workload", "decode", "--variant", "meo", "--merge-reuse", "sequence")
    assert (record["workload"], record["merge_reuse"], record["context"]) == ("decode", "sequence", 8)
    per_block = 4 * ((32 * 64 + 64) + (64 * 32 + 32))  # both MoE linears' merged experts, float32
    assert record["merged_cache_bytes"] == 3 * per_block * 1  # B x merged expert x layers
    rows = 3 * (32 + 64) * 4 * 2  # each linear reads and writes its row
    assert record["roofline_bytes_by_phase"] == {"experts": record["merged_cache_bytes"] + rows}
    assert record["impl_choice"] == "rule"  # a step that keeps its merged expert merges nothing


def test_a_generate_record_times_its_prefill_and_its_steps():
    record = _latency_json("--workload", "generate:2", "--variant", "moe", "--impl", "grouped")
    assert record["prefill_ms"] > 0 and record["decode_ms_per_step"] > 0
    assert record["merged_cache_bytes"] is None  # vanilla keeps nothing
    tokens = record["tokens_per_s"] * record["latency_ms_median"] / 1e3
    assert tokens == pytest.approx(3 * (8 + 2))  # B x (L + N) tokens per call


def test_bert_cannot_decode_one_line_exit_2():
    result = CliRunner().invoke(app, ["latency", "--host", "bert-small", "--workload", "decode"])
    assert result.exit_code == 2 and "encoder-only" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("variant, reuse", [("moe", None), ("meo", "step")])
def test_a_decode_step_under_an_imposed_routing_routes_at_its_own_position(variant, reuse):
    spec = Spec(variant=variant, workload="generate:2", merge_reuse=reuse, routing="uniform", **LAYER)
    work = Workload.build(spec)
    layer = work.decoding.layers[0] if work.decoding.layers else work.model.up
    table = layer.router.imposed.table  # (B, L + N, k) drawn at build
    work.step()  # the prompt (positions 0..L-1), then steps at positions L and L + 1
    last = table[:, spec.seq_len + 1]  # (B, k): the last step's position
    assert torch.equal(layer.last_top_k_index.sort(-1).values, last.sort(-1).values)


@torch.no_grad()
def test_lory_keeps_the_merge_its_next_segment_would_make():
    """Lory with one segment per prompt (T = L): the tokens after it form the next segment,
    which a prefill routes on the prompt's mean, so each kept-merge step equals that prefill."""
    spec = Spec(variant="lory", segment_len=8, workload="generate:8", merge_reuse="sequence",
                expert_unit="ffn", **LAYER)
    plain = build_model(spec)  # the same weights (seeded), without a decoding state
    tokens = decode_inputs(spec)
    dec = Decoding(build_model(spec), spec)
    dec.prompt(tokens.prompt)
    got = torch.cat([dec.step(x) for x in tokens.steps], dim=1)  # (B, 8, d)
    want = plain(torch.cat([tokens.prompt, *tokens.steps], dim=1))[:, spec.seq_len:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
