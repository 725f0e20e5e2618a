"""Peak memory of one call, in bytes, with the method that measured it named in `mem_method`.

Convention: `peak_mem_bytes` is everything allocated at the worst moment of the call, resident
weights and inputs included; `peak_mem_above_weights_bytes` subtracts the resident parameters and
buffers (`weights_bytes`), leaving inputs, activations, gradients and (MEO) merged weights.

Methods (one per device, chosen by the registry `PEAK_MEMORY_BY_DEVICE`):
- `cuda_max_allocated`: synchronize, `torch.cuda.reset_peak_memory_stats`, call, synchronize,
  `torch.cuda.max_memory_allocated`. Exact for the caching allocator's live tensors.
- `cpu_profiler_alloc_events`: the CPU allocator has no peak counter, so the call runs once under
  `torch.profiler` with `profile_memory=True`; every allocation and free is an event with a signed
  byte count; their running sum in time order is the memory the call holds above what existed
  before it, and its maximum is the peak. Resident = parameters + buffers + inputs + what a
  decode keeps between steps (KV cache, merged experts; gradients are cleared first). Checked against a hand-made allocation pattern in tests/test_memory.py. It sees
  torch's own allocations only: scratch that MKL or oneDNN allocate inside a kernel is missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from meo_profile.measure.process import native_stderr_silenced
from meo_profile.measure.workload import Workload


@dataclass(frozen=True)
class PeakMemory:
    peak_bytes: int
    weights_bytes: int
    method: str

    @property
    def above_weights_bytes(self) -> int:
        return self.peak_bytes - self.weights_bytes

    def to_fields(self) -> dict[str, Any]:
        return {"peak_mem_bytes": self.peak_bytes,
                "peak_mem_above_weights_bytes": self.above_weights_bytes,
                "weights_bytes": self.weights_bytes, "mem_method": self.method}


# ------------------------------------------------------------------------------------ CPU
@dataclass(frozen=True)
class AllocProfile:
    """Bytes a call allocated above what existed before it: at its worst moment, and still held
    when it returned (its output and, in training, the tensors autograd saved for backward)."""

    peak_bytes: int
    held_bytes: int


def running_sum_profile(signed_bytes: Iterable[int]) -> AllocProfile:
    """Running sum of allocations (+) and frees (-) in time order; its maximum (never below 0,
    the state before the call) and its final value."""
    held = peak = 0
    for delta in signed_bytes:
        held += delta
        peak = max(peak, held)
    return AllocProfile(peak, held)


def cpu_alloc_profile(fn: Callable[[], Any]) -> AllocProfile:
    """What `fn()` allocates on the CPU, from the profiler's allocation events (see module doc)."""
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                           profile_memory=True) as prof:
        fn()
    # kineto's raw events: each "[memory]" record is one allocation (+) or free (-); the
    # aggregated FunctionEvents fold them into ops and lose the order we need
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    return running_sum_profile(e.nbytes() for e in events)


def cpu_peak(work: Workload) -> PeakMemory:
    work.clear_grads()
    above_resident = cpu_alloc_profile(work.step).peak_bytes
    # a decode's KV cache and kept merged experts were allocated before the step, and stay
    resident = work.weights_bytes + work.inputs_bytes + work.state_bytes
    return PeakMemory(resident + above_resident, work.weights_bytes, "cpu_profiler_alloc_events")


# ----------------------------------------------------------------------------------- CUDA
def cuda_max_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated on the current CUDA device during `fn()`, everything live included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def cuda_peak(work: Workload) -> PeakMemory:
    work.clear_grads()
    return PeakMemory(cuda_max_allocated_bytes(work.step), work.weights_bytes, "cuda_max_allocated")


PEAK_MEMORY_BY_DEVICE: dict[str, Callable[[Workload], PeakMemory]] = {"cpu": cpu_peak, "cuda": cuda_peak}


def peak_memory(work: Workload) -> PeakMemory:
    """Peak memory of one `work.step()` on the workload's device."""
    return PEAK_MEMORY_BY_DEVICE[work.spec.device](work)
