"""Peak memory: the CPU method checked against a hand-made allocation pattern, and training's
cost for MEO (the merged weights autograd keeps for the backward) made visible."""

import pytest
import torch
from meo_profile.models import Spec, sparse_layers

from meo_profile.measure.memory import (
    AllocProfile,
    cpu_alloc_profile,
    cuda_max_allocated_bytes,
    peak_memory,
    running_sum_profile,
)
from meo_profile.measure.phase_work import expert_bytes
from meo_profile.measure.workload import Workload

MB = 1_000_000
TINY = dict(host="layer", num_experts=8, top_k=2, d_model=64, d_ff=128, seq_len=16, batch_size=4,
            device="cpu")


def known_pattern(device: str = "cpu"):
    """Holds 4 MB + 2 MB, frees the 4 MB, then holds 2 MB + 8 MB: peak 10 MB, 2 MB + 8 MB left
    (the 8 MB returned, the 2 MB kept by `kept`)."""
    kept = []

    def fn():
        a = torch.empty(MB, dtype=torch.float32, device=device)  # 4 MB
        kept.append(torch.empty(MB // 2, dtype=torch.float32, device=device))  # 2 MB
        del a
        return torch.empty(2 * MB, dtype=torch.float32, device=device)  # 8 MB, dropped by caller

    return fn


def test_running_sum_peak_and_final():
    assert running_sum_profile([4, 2, -4, 8, -8]) == AllocProfile(peak_bytes=10, held_bytes=2)
    assert running_sum_profile([-5, 3]).peak_bytes == 0  # frees of older tensors: floor at 0
    assert running_sum_profile([]) == AllocProfile(0, 0)


def test_cpu_method_sees_a_known_allocation_pattern():
    profile = cpu_alloc_profile(known_pattern())
    # the profiler itself allocates a little on the side; allow 64 KiB of it
    assert 10 * MB <= profile.peak_bytes <= 10 * MB + 65536
    assert 2 * MB <= profile.held_bytes <= 2 * MB + 65536


def _peak(variant: str, mode: str):
    work = Workload.build(Spec(variant=variant, mode=mode, **TINY))
    work.step()  # a first step, as a timer would have run, so lazy state is already there
    return peak_memory(work)


def test_train_needs_more_memory_than_inference_for_meo():
    inference, train = _peak("meo", "inference"), _peak("meo", "train")
    assert inference.method == train.method == "cpu_profiler_alloc_events"
    assert inference.weights_bytes == train.weights_bytes
    assert train.peak_bytes > inference.peak_bytes
    assert inference.peak_bytes > inference.weights_bytes  # activations and merges on top


@pytest.mark.parametrize("impl", ["gather", "dense"])
def test_train_forward_keeps_the_merged_weights_for_the_backward(impl):
    work = Workload.build(Spec(variant="meo", mode="train", impl=impl, **TINY))
    outputs = []
    train_held = cpu_alloc_profile(lambda: outputs.append(work.model(*work.inputs))).held_bytes
    outputs.clear()  # frees the graph and its saved tensors
    with torch.inference_mode():
        inference_held = cpu_alloc_profile(lambda: outputs.append(work.model(*work.inputs))).held_bytes
    # bmm(h, W_b) saves W_b (B merged matrices) to give h its gradient. The first MoE layer's
    # input is the raw batch, which needs none, so autograd keeps the merged weights of every
    # later layer: here the second linear's, B * (d_ff * d + d) elements.
    later = sparse_layers(work.model)[1:]
    merged_bytes = sum(work.spec.batch_size * expert_bytes(layer) for layer in later)
    assert train_held - inference_held >= merged_bytes


def test_record_fields_name_the_method_and_subtract_weights():
    fields = _peak("dense", "inference").to_fields()
    assert fields["mem_method"] == "cpu_profiler_alloc_events"
    assert fields["peak_mem_above_weights_bytes"] == fields["peak_mem_bytes"] - fields["weights_bytes"]
    assert fields["peak_mem_above_weights_bytes"] > 0


@pytest.mark.gpu
def test_cuda_method_sees_a_known_allocation_pattern():
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    peak = cuda_max_allocated_bytes(known_pattern("cuda"))
    assert 10 * MB <= peak - before <= 10 * MB + 2 * 2**20  # allocator rounds up to 2 MiB blocks


@pytest.mark.gpu
def test_cuda_train_needs_more_memory_than_inference_for_meo():
    def peak(mode):
        work = Workload.build(Spec(variant="meo", mode=mode, **{**TINY, "device": "cuda"}))
        work.step()
        return peak_memory(work)

    inference, train = peak("inference"), peak("train")
    assert inference.method == "cuda_max_allocated"
    assert train.peak_bytes > inference.peak_bytes
