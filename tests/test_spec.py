"""Bad configurations are refused where the spec is made, naming the flag and the value."""


import pytest
from meo_profile.models import Spec, SpecError


@pytest.mark.parametrize("kwargs, flag", [
    (dict(num_experts=4, top_k=8), "--top-k"),
    (dict(num_experts=0), "--experts"),
    (dict(top_k=0), "--top-k"),
    (dict(seq_len=0), "--seq-len"),
    (dict(host="bert-huge"), "--host"),
    (dict(variant="smoe"), "--variant"),
    (dict(variant="moe", impl="fused"), "--impl"),
    (dict(variant="moe", impl="hf-grouped_mm"), "--impl"),  # layer's experts are not SwiGLU
    (dict(variant="meo", impl="fused", mode="train"), "--impl"),  # no backward
    (dict(variant="moe", impl="gather"), "--impl"),
    (dict(dtype="int8"), "--dtype"),
    (dict(host="bert-base", d_model=100), "--d-model"),
    (dict(host="t5-small", layers=3), "--layers"),
    (dict(variant="ce", top_k=4, n_ce=4), "--n-ce"),
    (dict(d_model=0), "--d-model"),  # 0 is not "the host's default"
    (dict(host="bert-small", layers=0), "--layers"),
    (dict(router_scale=float("nan")), "--router-scale"),
    (dict(variant="xmoe", capacity_factor=float("inf")), "--capacity-factor"),
    (dict(variant="xmoe", granularity=0), "--granularity"),
])
def test_bad_values_name_their_flag(kwargs, flag):
    with pytest.raises(SpecError) as err:
        Spec(**kwargs)
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)


def test_auto_impl_stays_asked_and_its_rule_picks_the_merge_that_reads_fewer_bytes():
    assert Spec(variant="meo").impl == "auto"  # resolved where measured (rule or timing)
    assert Spec(variant="meo", num_experts=64, top_k=2, batch_size=8).impl_by_rule == "gather"
    assert Spec(variant="meo", num_experts=16, top_k=4, batch_size=8).impl_by_rule == "dense"
    assert Spec(variant="moe").impl_by_rule == "grouped"
    assert Spec(variant="meo", impl="fused").impl_by_rule == "fused"  # a given one is kept


def test_transformers_experts_apply_to_swiglu_ffn_experts_only():
    spec = Spec(host="olmoe", variant="moe", impl="hf-grouped_mm", layers=1, d_model=64, d_ff=32)
    assert spec.expert_unit == "ffn" and spec.impl == "hf-grouped_mm"
    with pytest.raises(SpecError, match="SwiGLU"):
        Spec(host="olmoe", variant="moe", impl="hf-eager", expert_unit="linear")


def test_host_defaults_fill_the_shape():
    spec = Spec(host="bert-large")
    assert (spec.d_model, spec.d_ff, spec.layers) == (1024, 4096, 24)


@pytest.mark.parametrize("args, needle", [
    (["verify", "--experts", "4", "--top-k", "8"], "--top-k 8"),
    (["flops", "--host", "nope"], "--host 'nope'"),
    (["flops", "--experts", "many"], "--experts"),
    (["flops", "--source", "guess"], "--source 'guess'"),
    (["verify", "--device", "meta"], "--device 'meta'"),
    (["flops", "--variant", "xmoe", "--source", "analytic"], "--variant 'xmoe'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle, cli):
    proc = cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
