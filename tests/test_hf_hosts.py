"""`--host hf:PATH`: a user's own transformers MoE config, written here by the tests."""

import json

import pytest
import torch
from meo_profile.models import Spec, SpecError, build_model, make_inputs, sparse_layers

from meo_profile.measure import analytic
from meo_profile.measure.counting import disagreements
from meo_profile.measure.fvcore_count import count_fvcore

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=256)


def save(tmp_path, config, name: str = "model") -> str:
    """The config as a model folder holding config.json, as save_pretrained writes it."""
    folder = tmp_path / name
    config.save_pretrained(folder)
    return f"hf:{folder}"


@pytest.fixture(scope="module")
def granite(tmp_path_factory) -> str:
    """GraniteMoe: a family the project has no name or closed form for; its block sits at
    `block_sparse_moe` with its router at `router`."""
    from transformers import GraniteMoeConfig

    config = GraniteMoeConfig(**TINY, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2)
    return save(tmp_path_factory.mktemp("hf"), config, "granite")


def test_a_family_not_named_builds_from_its_own_sizes_and_counts(granite):
    spec = Spec(host=granite, variant="moe", seq_len=8, batch_size=2)
    assert (spec.d_model, spec.d_ff, spec.layers, spec.num_experts, spec.top_k, spec.impl_by_rule) == (
        64, 48, 2, 8, 2, "hf-grouped_mm")
    counts = count_fvcore(spec)
    L, N, H, W, E, k = 2, 16, 64, 48, 8, 2  # the discovered blocks' own arithmetic (W: width)
    assert counts.macs_by_part["experts"] == L * N * k * 3 * H * W
    assert counts.macs_by_part["router"] == L * N * E * H
    assert counts.params_total - counts.params_active == L * (E - k) * 3 * H * W
    with pytest.raises(SpecError, match="^--host .*no closed form"):
        analytic.count(spec)


def test_every_variant_runs_on_a_users_config_scaled_down(granite):
    for variant in ("dense", "moe", "meo", "meo-token", "ce", "xmoe"):
        spec = Spec(host=granite, variant=variant, d_model=32, d_ff=24, layers=1, seq_len=8,
                    batch_size=2, **({} if variant == "moe" else dict(num_experts=4, top_k=2)))
        model = build_model(spec).eval()
        assert len(sparse_layers(model)) == (0 if variant in ("dense", "moe") else 1)
        with torch.no_grad():
            assert torch.isfinite(model(*make_inputs(spec))).all()
    meo = count_fvcore(Spec(host=granite, variant="meo", num_experts=8, top_k=2, seq_len=8, batch_size=2))
    assert meo.macs_by_part["experts"] == 2 * 16 * 3 * 64 * 48  # one merged expert per token
    assert meo.macs_by_part["merge"] == 2 * 2 * 2 * 3 * 64 * 48  # B * k experts folded, per layer


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe", "deepseek_v3"])
def test_a_named_familys_config_with_its_own_layout_counts_as_the_closed_form(family, tmp_path):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    layouts = {  # dense layers where each family puts them, in a user's file
        "qwen3_moe": dict(num_hidden_layers=3, mlp_only_layers=[1], intermediate_size=96,
                          moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, head_dim=24),
        "qwen2_moe": dict(num_hidden_layers=4, decoder_sparse_step=2, intermediate_size=96,
                          moe_intermediate_size=32, shared_expert_intermediate_size=48,
                          num_experts=8, num_experts_per_tok=2),
        "deepseek_v3": dict(num_hidden_layers=3, first_k_dense_replace=1, intermediate_size=96,
                            moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=2,
                            num_experts_per_tok=2, n_group=2, topk_group=1, q_lora_rank=32,
                            kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                            v_head_dim=12, num_key_value_heads=4),
    }
    host = save(tmp_path, CONFIG_MAPPING[family](**{**TINY, **layouts[family]}))
    for variant in ("moe", "meo"):
        spec = Spec(host=host, variant=variant, seq_len=8, batch_size=2)
        assert (spec.num_experts, spec.top_k) == (8, 2)  # the file's, however it names them
        counts = count_fvcore(spec)
        assert disagreements(counts, analytic.count(spec)) == []
        assert counts.macs_by_part.get("dense_ffn", 0) > 0


@pytest.mark.parametrize("host", ["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3", "olmoe", "phimoe"])
def test_each_familys_config_saved_by_transformers_counts_and_rescales(host, tmp_path):
    """save_pretrained also writes fields the class derives (Qwen3-MoE's num_local_experts at
    the class default, DeepSeek-V3's qk_head_dim): read back, and rescaled, they must not
    override the file's own values or what the new sizes derive."""
    from meo_profile.models.native import host_config

    width = {"qwen2-moe": 56, "olmoe": 32}.get(host, 64)
    named = Spec(host=host, variant="moe", d_model=width, d_ff=32, layers=2, num_experts=8,
                 top_k=2, seq_len=8, batch_size=2)
    saved = save(tmp_path, host_config(named))
    user = Spec(host=saved, variant="moe", seq_len=8, batch_size=2)
    assert (user.d_model, user.d_ff, user.layers, user.num_experts, user.top_k) == (
        named.d_model, named.d_ff, named.layers, named.num_experts, named.top_k)
    assert disagreements(analytic.count(user), analytic.count(named)) == []
    wider = user.replace(d_model=2 * width, d_ff=48, layers=3)
    assert disagreements(count_fvcore(wider), analytic.count(wider)) == []


def test_the_published_mixtral_as_a_users_file_counts_as_the_named_host(tmp_path):
    from meo_profile.models.native_configs import PUBLISHED

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "mixtral", **PUBLISHED["mixtral"].fields}))
    named, user = (Spec(host=h, variant="moe", device="meta") for h in ("mixtral", f"hf:{path}"))
    a, b = analytic.count(named), analytic.count(user)
    assert (a.params_total, a.params_active, a.macs) == (b.params_total, b.params_active, b.macs)
    assert sum(p.numel() for p in build_model(user).parameters()) == b.params_total


def layouts_refused(tmp_path):
    from transformers import GptOssConfig, JetMoeConfig, LlamaConfig

    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "mixtral", ')
    return {
        "missing": (f"hf:{tmp_path / 'nowhere'}", "no config file"),
        "unreadable JSON": (f"hf:{bad}", "unreadable JSON"),
        "dense model": (save(tmp_path, LlamaConfig(**TINY, intermediate_size=96), "llama"),
                        "a dense model"),
        "two stacked children (JetMoE)": (save(tmp_path, JetMoeConfig(
            **{**TINY, "num_key_value_heads": 2}, kv_channels=16, intermediate_size=96,
            num_local_experts=4, num_experts_per_tok=2), "jetmoe"), "2 stacked-expert children"),
        "own gate function (GPT-OSS)": (save(tmp_path, GptOssConfig(
            **TINY, intermediate_size=64, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            layer_types=["full_attention"] * 2), "gptoss"), "own gate function"),
    }


def test_bad_hf_hosts_are_refused_in_one_line(tmp_path):
    for why, (host, needle) in layouts_refused(tmp_path).items():
        with pytest.raises(SpecError) as err:
            Spec(host=host, variant="meo")
        message = str(err.value)
        assert message.startswith(f"--host {host!r}") and needle in message, why
        assert "\n" not in message, why


def test_the_command_line_counts_a_users_config_and_refuses_a_bad_one(granite, tmp_path, cli):
    ok = cli("flops", "--host", granite, "--variant", "meo", "--json")
    record = json.loads(ok.stdout)
    assert ok.returncode == 0 and record["host"] == granite and record["flops_source"] == "fvcore"
    assert record["router_gates"] == "topk_softmax"
    assert record["host_router_gates"] == "softmax_topk_renorm"
    bad = cli("flops", "--host", f"hf:{tmp_path}")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"error: --host 'hf:{tmp_path}': no config file at "
                                               f"{tmp_path / 'config.json'}"]


def test_trace_of_a_users_config_shows_its_own_blocks_phases(granite, tmp_path):
    """transformers' own MoE block marks no phases: trace marks its router and experts."""
    from meo_profile.measure.trace import trace
    from meo_profile.terminal import perf

    summary = trace(Spec(host=granite, variant="moe", seq_len=8, batch_size=2),
                    tmp_path / "t.json", warmup=0)
    assert list(summary.analysis.phase_host_ms()) == ["router", "experts"]
    assert perf.phases_table(summary) is not None and perf.phase_lines(summary) == []
