"""Roofline: bytes counted from the model's structure, the bound's arithmetic on given peaks,
peaks measured once per process, and a bound that stays below what is measured."""

import math

import pytest
import torch

from meo_profile.measure import roofline as roofline_module
from meo_profile.measure.roofline import (
    DevicePeaks,
    bytes_moved,
    device_peaks,
    expected_distinct,
    expert_bytes,
    roofline,
)
from meo_profile.measure.run import measure
from meo_profile.measure.timing import TimingOptions
from models import Spec, build_model, sparse_layers

TINY = dict(host="layer", num_experts=8, top_k=2, d_model=64, d_ff=128, seq_len=16, batch_size=4,
            device="cpu")


def test_expected_distinct_experts():
    assert expected_distinct(16, 4, 1) == pytest.approx(4.0)  # one input: its k experts
    assert expected_distinct(16, 4, 1024) == pytest.approx(16.0)  # many inputs: all of them
    assert expected_distinct(16, 4, 8) == pytest.approx(16 * (1 - 0.75**8))
    assert expected_distinct(4, 4, 3) == pytest.approx(4.0)


def test_dense_layer_bytes_by_hand():
    spec = Spec(variant="dense", **TINY)
    d, f, N, fp32 = 64, 128, 4 * 16, 4
    weights = (d * f + f + f * d + d) * fp32
    activations = N * (d + f) * fp32 + N * (f + d) * fp32  # each linear reads, then writes
    assert bytes_moved(spec) == weights + activations


def test_meo_moves_the_merged_weights_on_top_of_sequence_level_moe():
    meo, seq = Spec(variant="meo", **TINY), Spec(variant="moe-seq", **TINY)
    model = build_model(meo, device="meta")
    merged = sum(2 * meo.batch_size * expert_bytes(layer) for layer in sparse_layers(model))
    assert bytes_moved(meo, model) - bytes_moved(seq) == merged


def test_token_routing_reads_more_experts_than_sequence_routing():
    assert bytes_moved(Spec(variant="moe", **TINY)) > bytes_moved(Spec(variant="moe-seq", **TINY))


def test_bound_is_the_slower_of_compute_and_memory():
    peaks = DevicePeaks("cpu", "float32", macs_per_s=1e12, bytes_per_s=1e11)
    spec = Spec(variant="dense", **TINY)
    memory_bound = roofline(spec, macs=10**9, bytes_moved=10**9, peaks=peaks)
    assert (memory_bound.compute_ms, memory_bound.memory_ms) == (pytest.approx(1.0), pytest.approx(10.0))
    assert memory_bound.bound_ms == pytest.approx(10.0) and memory_bound.memory_ms > memory_bound.compute_ms
    compute_bound = roofline(spec, macs=10**11, bytes_moved=10**6, peaks=peaks)
    assert compute_bound.compute_ms > compute_bound.memory_ms and compute_bound.bound_ms == pytest.approx(100.0)
    train = roofline(spec.replace(mode="train"), macs=10**9, bytes_moved=10**9, peaks=peaks)
    assert train.bound_ms == pytest.approx(3 * memory_bound.bound_ms)  # forward + backward
    assert memory_bound.to_fields(25.0) == {"roofline_ms": pytest.approx(10.0),
                                            "roofline_ratio": pytest.approx(2.5)}


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


@pytest.mark.parametrize("variant", ["dense", "moe", "meo"])
def test_bound_is_below_the_measured_time(variant):
    fields = measure(Spec(variant=variant, **TINY), ("latency",),
                     timing=TimingOptions(warmup=1, min_run_time=0.05)).to_dict()
    assert 0 < fields["roofline_ms"] < fields["latency_ms_median"]
    assert fields["roofline_ratio"] > 1


@pytest.mark.gpu
def test_cuda_bound_is_below_the_measured_time():
    spec = Spec(variant="meo", **{**TINY, "device": "cuda"})
    fields = measure(spec, ("latency",), timing=TimingOptions(warmup=2, min_run_time=0.05)).to_dict()
    assert fields["timer"] == "cuda_events"
    assert 0 < fields["roofline_ms"] < fields["latency_ms_median"]
    assert torch.cuda.is_available()
