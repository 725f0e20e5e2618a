"""Routing traces: the file format, `routing capture` from a tiny checkpoint saved here (random
weights, a tokenizer trained here), `--routing replay:FILE` reproducing its choices exactly,
`routing stats` on it and on hand-made traces, and the traces a configuration refuses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from meo_profile.models import Spec, SpecError, build_model, make_inputs
from meo_profile.models.imposed import routed_modules
from meo_profile.models.routing_trace import (
    RoutingTrace,
    TraceError,
    TraceHeader,
    load_trace,
    save_trace,
)
from typer.testing import CliRunner

from cli import app
from meo_profile.measure.routing.stats import layer_stats, trace_summary

E, K, SEQ = 8, 2, 16
WORDS = ["cat", "dog", "moe", "merge", "router", "expert", "token", "sequence"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny OLMoE saved with random weights and a word-level tokenizer trained on the text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, OlmoeConfig

    root = tmp_path_factory.mktemp("checkpoint")
    text = " ".join(f"{WORDS[i % 8]} {WORDS[(3 * i) % 7]} {i % 5}" for i in range(200))
    (root / "text.txt").write_text(text, encoding="utf-8")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    folder = root / "olmoe"
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_experts=E,
                         num_experts_per_tok=K, eos_token_id=None, bos_token_id=None,
                         pad_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return root


@pytest.fixture(scope="module")
def captured(checkpoint):
    out = checkpoint / "trace.npz"
    result = CliRunner().invoke(app, ["routing", "capture", "--host", f"hf:{checkpoint / 'olmoe'}",
                                      "--text", str(checkpoint / "text.txt"), "--out", str(out),
                                      "--seq-len", str(SEQ), "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out


def test_capture_records_every_moe_layers_choice_per_token(captured):
    trace = load_trace(captured)
    h = trace.header
    assert (h.num_experts, h.top_k, h.tokens, h.layers) == (E, K, SEQ, 2)
    assert h.sequences == 600 // SEQ  # 600 words, the remainder dropped
    assert h.layer_names == ("model.layers.0.mlp", "model.layers.1.mlp")
    assert trace.top_k_index.shape == (2, h.sequences, SEQ, K)
    assert (np.diff(np.sort(trace.top_k_index, -1), axis=-1) > 0).all()  # k distinct per token
    # OLMoE's gates: softmax over E, not renormalised, ranked: in (0, 1], summing to at most 1
    weights = trace.top_k_weights
    assert weights.shape == trace.top_k_index.shape and (weights > 0).all()
    assert (weights.sum(-1) <= 1 + 1e-6).all() and (np.diff(weights, axis=-1) <= 0).all()


@pytest.mark.parametrize("variant", ["moe", "meo"])
def test_replay_reproduces_the_traces_choices_exactly(captured, checkpoint, variant):
    spec = Spec(host=f"hf:{checkpoint / 'olmoe'}", variant=variant, seq_len=SEQ, batch_size=3,
                routing=f"replay:{captured}")
    model = build_model(spec)
    seen = []  # what the model's own router hands its experts, after the replay's hook
    if variant == "moe":
        routed_modules(model)[0].router.register_forward_hook(lambda m, a, out: seen.append(out))
    model(*make_inputs(spec))
    trace = load_trace(captured).top_k_index
    for layer, module in enumerate(routed_modules(model)):
        got = module.last_top_k_index.sort(-1).values.view(3, -1, K)  # (B, T or 1, k)
        want = np.sort(trace[layer, :3, :got.shape[1]], -1)  # a sequence-level layer: position 0
        assert np.array_equal(got.numpy(), want), (variant, layer)
    assert len(seen) == (1 if variant == "moe" else 0)
    for logits, weights, index in seen:  # OLMoE's own gates: softmax over E at the replayed experts
        assert torch.allclose(weights, logits.softmax(-1).gather(1, index), atol=1e-6)


def test_routing_stats_prints_the_per_layer_table(captured):
    result = CliRunner().invoke(app, ["routing", "stats", str(captured)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "model.layers.0.mlp" in result.output and "model.layers.1.mlp" in result.output
    assert "locality" in result.output and "Zipf s" in result.output
    as_json = json.loads(CliRunner().invoke(app, ["routing", "stats", str(captured), "--json"]).output)
    assert [row["layer"] for row in as_json["by_layer"]] == ["model.layers.0.mlp", "model.layers.1.mlp"]


def hand_made(index: list, num_experts: int, tmp_path=None) -> RoutingTrace:
    """One layer of k = 1 choices, (sequences, tokens)."""
    array = np.array(index, dtype=np.int32)[None, ..., None]  # (1, S, T, 1)
    header = TraceHeader("hand-made", num_experts, 1, array.shape[1], array.shape[2], ("l0",))
    return RoutingTrace(header, array)


def test_the_statistics_of_a_hand_made_trace():
    # loads 2, 2, 3, 1 over E = 4; consecutive pairs sharing: (0,0) (1,1) | (2,2) (2,2) of 6
    s = layer_stats("l0", torch.tensor([[0, 0, 1, 1], [2, 2, 2, 3]])[..., None], 4)
    assert s.load_max_over_mean == 1.5
    assert s.load_cv == pytest.approx(math.sqrt(0.5) / 2)
    assert s.experts_per_sequence == 2.0
    q = [2 / 8, 2 / 8, 3 / 8, 1 / 8]  # the chance one token picks each expert
    assert s.independent_expectation == pytest.approx(sum(1 - (1 - p) ** 4 for p in q))
    assert s.locality == s.same_experts == pytest.approx(4 / 6)
    # loads 12, 6, 4, 3: exactly ∝ rank^-1
    zipf = [[0] * 5, [0] * 5, [0, 0, 1, 1, 1], [1, 1, 1, 2, 2], [2, 2, 3, 3, 3]]
    assert layer_stats("l0", torch.tensor(zipf)[..., None], 4).zipf_s == pytest.approx(1.0)


def test_a_trace_round_trips_and_its_summary_averages_its_layers(tmp_path):
    trace = hand_made([[0, 0, 1, 1], [2, 2, 2, 3]], 4)
    path = save_trace(trace, tmp_path / "t.npz")
    back = load_trace(path)
    assert back.header == trace.header and np.array_equal(back.top_k_index, trace.top_k_index)
    summary = trace_summary(back, str(path))
    assert (summary["load_max_over_mean"], summary["experts_per_sequence"]) == (1.5, 2.0)


def test_a_trace_the_configuration_cannot_replay_is_refused_in_one_line(captured, tmp_path):
    bad = tmp_path / "not-a-trace.npz"
    bad.write_text("hello")
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps({"format": "meo-profile routing trace", "version": 9})))
    for routing, says in ((f"replay:{captured}", "k=2 of E=8"), (f"replay:{bad}", "not a routing trace"),
                          (f"replay:{old}", "version 9"), (f"replay:{tmp_path}/none.npz", "no such file")):
        with pytest.raises(SpecError) as e:
            Spec(host="layer", variant="moe", num_experts=16, top_k=4, routing=routing)
        assert says in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SpecError, match="holds 16 tokens"):
        Spec(host="layer", variant="moe", num_experts=E, top_k=K, seq_len=32,
             routing=f"replay:{captured}")
    result = CliRunner().invoke(app, ["latency", "--experts", "16", "--routing", f"replay:{captured}"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--routing" in result.output
    with pytest.raises(TraceError):
        load_trace(bad)
