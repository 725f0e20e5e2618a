"""The memory pre-flight: an estimate above the measured peak, refusals before anything is built
(one line naming estimate and limit, exit 2), and counts that need no memory at all."""

import time

import pytest
from meo_profile.models import Spec

from cli import app
from meo_profile.measure import analytic
from meo_profile.measure.preflight import DoesNotFit, check_fits, estimate, weight_bytes
from meo_profile.measure.run import measure

SMALL = dict(d_ff=128, num_experts=4, top_k=2, seq_len=32, batch_size=4, device="cpu")


@pytest.mark.parametrize("host, variant, impl, mode", [
    ("layer", "moe", "loop", "train"),
    ("layer", "moe-seq", "grouped", "inference"),
    ("layer", "meo", "gather", "inference"),
    ("bert-small", "moe", "grouped", "train"),
    ("t5-small", "ce", "auto", "inference"),
    ("olmoe", "xmoe", "padded", "inference"),
    ("layer", "lory", "auto", "train"),  # one merged expert per segment, kept for the backward
    ("layer", "soft-moe", "stacked", "inference"),
])
def test_the_estimate_is_above_the_measured_peak_and_within_three_times(host, variant, impl, mode):
    spec = Spec(host=host, variant=variant, impl=impl, mode=mode, d_model=64, layers=2 if host != "layer" else None,
                expert_unit="ffn" if variant == "xmoe" else None,
                segment_len=8 if variant == "lory" else None, **SMALL)
    peak = measure(spec, ("memory",)).peak_mem_bytes
    need = estimate(spec).total_bytes
    assert peak <= need <= 3 * peak, (peak, need)


def test_a_low_precision_build_passes_through_float32():
    spec = Spec(dtype="bfloat16", **SMALL)
    need = estimate(spec)
    assert need.build_bytes == 2 * need.weights_bytes == 2 * weight_bytes(spec)
    assert need.total_bytes >= need.build_bytes


def test_over_the_limit_is_one_line_naming_estimate_and_limit():
    spec = Spec(**SMALL)
    with pytest.raises(DoesNotFit) as err:
        check_fits(spec, limit_bytes=2**20)
    text = str(err.value)
    assert text.startswith("layer meo E=4 k=2") and "\n" not in text
    assert "needs about" in text and "(weights " in text and "activations ~" in text
    assert "the limit is 1.0 MiB (--max-memory)" in text
    assert check_fits(spec).total_bytes == estimate(spec).total_bytes  # fits the machine


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as done:
        app(args=args, prog_name="meo-profile")
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.mark.parametrize("command", ["latency", "trace", "verify", "flops --variant moe --impl loop"])
def test_every_command_that_builds_refuses_before_building(capsys, tmp_path, command):
    args = [*command.split(), "--d-model", "64", "--d-ff", "128", "--seq-len", "32",
            "--batch-size", "4", "--max-memory", "64KiB"]
    args += ["--out", str(tmp_path / "t.json")] if command == "trace" else []
    code, out, err = run_cli(args, capsys)
    if command.startswith("flops"):  # a traced count that cannot fit falls back to the closed form
        assert code == 0 and "closed form used" in out and "above the 64.0 KiB limit" in out
        return
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "needs about" in err and "the limit is 64.0 KiB (--max-memory)" in err
    assert not (tmp_path / "t.json").exists()


def test_latency_of_olmoe_is_refused_in_seconds_not_minutes(capsys):
    start = time.perf_counter()
    code, out, err = run_cli(["latency", "--host", "olmoe", "--max-memory", "16GiB"], capsys)
    assert code == 2 and "weights 25.8 GiB" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - start < 60  # a meta build: nothing allocated


def test_a_batch_too_large_for_memory_still_counts_on_meta():
    spec = Spec(seq_len=2**40, batch_size=8)  # 8 Ti tokens: shapes only, no tensor allocated
    counted = measure(spec, ("flops",))
    assert counted.status == "ok" and counted.count_device == "meta"
    assert counted.macs == analytic.count(spec).macs
