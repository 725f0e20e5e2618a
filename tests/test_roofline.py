"""Roofline: what each phase must compute and move, counted from the model's structure by hand,
the phase-wise bound's arithmetic on given peaks (the sum of its phases, never below the
whole-call bound, on a grid of configurations), peaks measured once per process, distinct experts
read from the routing that ran, and a bound that stays below what is measured."""

import itertools
import math

import pytest
import torch
from meo_profile.models import Spec, build_model, make_inputs, sparse_layers
from meo_profile.models.layers import experts_touched

from meo_profile.measure import roofline as roofline_module
from meo_profile.measure.phase_work import (
    BOUND_PHASES,
    HOST,
    Work,
    expected_distinct,
    expert_bytes,
    phase_bytes,
    phase_work,
)
from meo_profile.measure.roofline import DevicePeaks, configuration_bound, device_peaks, roofline
from meo_profile.measure.run import measure
from meo_profile.measure.timing import TimingOptions

TINY = dict(host="layer", num_experts=8, top_k=2, d_model=64, d_ff=128, seq_len=16, batch_size=4,
            device="cpu")
PEAKS = DevicePeaks("cpu", "float32", macs_per_s=1e11, bytes_per_s=1e10)  # given, not probed
FP32 = 4


def test_expected_distinct_experts():
    assert expected_distinct(16, 4, 1) == pytest.approx(4.0)  # one input: its k experts
    assert expected_distinct(16, 4, 1024) == pytest.approx(16.0)  # many inputs: all of them
    assert expected_distinct(16, 4, 8) == pytest.approx(16 * (1 - 0.75**8))
    assert expected_distinct(4, 4, 3) == pytest.approx(4.0)


def test_dense_layer_moves_only_the_hosts_bytes():
    spec = Spec(variant="dense", **TINY)
    d, f, N = 64, 128, 4 * 16
    weights = (d * f + f + f * d + d) * FP32
    activations = N * (d + f) * FP32 + N * (f + d) * FP32  # each linear reads, then writes
    assert phase_bytes(spec, build_model(spec, device="meta")) == {HOST: weights + activations}


@pytest.mark.parametrize("impl", ["gather", "dense"])
def test_meo_phase_bytes_by_hand(impl):
    """Before any forward the distinct experts are the expected number over B sequences."""
    spec = Spec(variant="meo", impl=impl, **TINY)
    E, k, B, N, d, f = 8, 2, 4, 64, 64, 128
    read = E if impl == "dense" else expected_distinct(E, k, B)
    moved = phase_bytes(spec, build_model(spec, device="meta"))
    for d_in, d_out in ((d, f), (f, d)):  # the two MoE linears of the FFN
        one_expert = (d_in * d_out + d_out) * FP32
        moved["merge"] -= (read + B) * one_expert  # experts read, B merged matrices written
        moved["experts"] -= B * one_expert + N * (d_in + d_out) * FP32  # merged read; rows in, out
        routed = B * k * (FP32 + 8)  # gates and int64 indices written, per sequence
        moved["router"] -= N * d_in * FP32 + d_in * E * FP32 + routed  # the mean reads every token
    assert moved == {"merge": pytest.approx(0), "experts": pytest.approx(0),
                     "router": pytest.approx(0), HOST: 0}


def test_token_routing_reads_more_experts_than_sequence_routing():
    def expert_reads(variant):
        spec = Spec(variant=variant, **TINY)
        return phase_bytes(spec, build_model(spec, device="meta"))["experts"]

    assert expert_reads("moe") > expert_reads("moe-seq")


def test_the_bound_adds_each_phases_slower_side():
    spec = Spec(variant="meo", **TINY)
    work = {"merge": Work(macs=1e8, bytes=1e8), "experts": Work(macs=1e9, bytes=1e6)}
    bound = roofline(spec, work, PEAKS)
    assert bound.compute_ms == {"merge": pytest.approx(1.0), "experts": pytest.approx(10.0)}
    assert bound.memory_ms == {"merge": pytest.approx(10.0), "experts": pytest.approx(0.1)}
    assert bound.by_phase_ms == {"experts": pytest.approx(10.0), "merge": pytest.approx(10.0)}
    assert list(bound.by_phase_ms) == ["experts", "merge"]  # the layers' order
    assert bound.bound_ms == pytest.approx(20.0)  # merge (bytes) then matmuls (compute)
    assert bound.overlap_ms == pytest.approx(max(11.0, 10.1))  # one hidden behind the other
    train = roofline(spec.replace(mode="train"), work, PEAKS)
    assert train.bound_ms == pytest.approx(3 * bound.bound_ms)  # forward + backward
    fields = bound.to_fields(25.0)
    assert fields["roofline_ratio"] == pytest.approx(1.25) and fields["below_bound"] is False
    assert fields["roofline_by_phase"] == bound.by_phase_ms
    assert bound.to_fields(19.0)["below_bound"] is True  # faster than physics: distrust it
    assert bound.to_fields()["below_bound"] is None


GRID = [dict(variant=v, impl=i, top_k=k, num_experts=e, mode=m, batch_size=b)
        for (v, i), k, e, m, b in itertools.product(
            [("dense", "native"), ("moe", "grouped"), ("moe", "loop"), ("moe-seq", "grouped"),
             ("meo", "gather"), ("meo", "dense"), ("meo-token", "gather"), ("ce", "grouped")],
            [1, 2, 4], [4, 16], ["inference", "train"], [1, 8]) if k <= e]


@pytest.mark.parametrize("host", ["layer", "bert-small"])
def test_phase_bound_is_its_phases_sum_and_never_below_the_whole_call_bound(host):
    grid = GRID if host == "layer" else [c for c in GRID if c["num_experts"] == 16
                                         and c["batch_size"] == 8]  # a whole model: fewer points
    for config in grid:
        spec = Spec(**{**TINY, **config, "host": host, "d_model": None, "d_ff": None,
                       "n_ce": 1 if config["variant"] == "ce" and config["top_k"] > 1 else None})
        if spec.variant == "ce" and spec.top_k == 1:
            continue
        work = phase_work(spec, build_model(spec, device="meta"))
        assert set(work) <= set(BOUND_PHASES)
        bound = roofline(spec, work, PEAKS)
        assert bound.bound_ms == pytest.approx(sum(bound.by_phase_ms.values()), rel=1e-12)
        assert bound.bound_ms >= bound.overlap_ms * (1 - 1e-12), spec
        assert sum(w.macs for w in work.values()) > 0 and all(w.bytes >= 0 for w in work.values())


def test_measured_distinct_experts_replace_the_expected_number():
    spec = Spec(variant="meo", impl="gather", **TINY)
    model = build_model(spec)
    layers = sparse_layers(model)
    assert [experts_touched(layer) for layer in layers] == [None, None]  # no forward yet
    (x,) = make_inputs(spec)
    with torch.no_grad():
        model(x)
        first = layers[0].router(x.mean(dim=1)).top_k_index  # the first layer's own routing, again
    assert experts_touched(layers[0]) == len(set(first.flatten().tolist()))
    for layer in layers:
        distinct = len(set(layer.last_top_k_index.flatten().tolist()))
        assert experts_touched(layer) == distinct <= min(spec.batch_size * spec.top_k, 8)
    before = phase_bytes(spec, build_model(spec, device="meta"))["merge"]
    after = phase_bytes(spec, model)["merge"]
    read = sum(experts_touched(layer) * expert_bytes(layer) for layer in layers)
    merged = sum(spec.batch_size * expert_bytes(layer) for layer in layers)
    assert after == read + merged and after != before


def test_device_peaks_are_measured_once_per_process():
    peaks = device_peaks("cpu", "float32")
    assert device_peaks("cpu", "float32") is peaks
    assert math.isfinite(peaks.macs_per_s) and peaks.macs_per_s > 0
    assert math.isfinite(peaks.bytes_per_s) and peaks.bytes_per_s > 0


def test_refreshed_peaks_keep_the_best_seen(monkeypatch):
    # a peak this machine cannot reach stands in for an earlier, quieter probe
    unreachable = DevicePeaks("cpu", "float32", macs_per_s=1e18, bytes_per_s=1e18)
    monkeypatch.setitem(roofline_module._BEST_PEAKS, ("cpu", "float32"), unreachable)
    refreshed = device_peaks("cpu", "float32", refresh=True)
    assert (refreshed.macs_per_s, refreshed.bytes_per_s) == (1e18, 1e18)


def test_no_closed_form_means_no_bound():
    assert configuration_bound(Spec(variant="xmoe", granularity=2, **TINY), peaks=PEAKS) is None


@pytest.mark.serial  # a worker beside it slows the peak probes: the bound would rise
@pytest.mark.parametrize("variant", ["dense", "moe", "meo"])
def test_bound_is_below_the_measured_time(variant):
    for _ in range(2):  # the peaks are the best seen: load while one probe ran only hides them
        device_peaks("cpu", "float32", refresh=True)
    fields = measure(Spec(variant=variant, **TINY), ("latency",),
                     timing=TimingOptions(warmup=1, min_run_time=0.05)).to_dict()
    assert 0 < fields["roofline_overlap_ms"] <= fields["roofline_ms"] < fields["latency_ms_median"]
    assert fields["roofline_ms"] == pytest.approx(sum(fields["roofline_by_phase"].values()))
    assert fields["roofline_ratio"] > 1 and fields["below_bound"] is False
    phases = {"dense": {HOST}, "moe": {"router", "experts"}, "meo": {"router", "merge", "experts"}}
    assert set(fields["roofline_by_phase"]) == phases[variant]
    if variant != "dense":  # the routing that ran, read after the timed calls
        assert 1 <= fields["experts_touched_mean"] <= 8


@pytest.mark.gpu
@pytest.mark.serial
def test_cuda_bound_is_below_the_measured_time():
    spec = Spec(variant="meo", **{**TINY, "device": "cuda"})
    fields = measure(spec, ("latency",), timing=TimingOptions(warmup=2, min_run_time=0.05)).to_dict()
    assert fields["timer"] == "cuda_events"
    assert 0 < fields["roofline_ms"] < fields["latency_ms_median"]
    assert torch.cuda.is_available()
