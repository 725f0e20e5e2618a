"""`meo-profile latency`: one configuration's latency, throughput, peak memory and roofline bound.

The model and inputs are built before any clock starts (`Workload.build`); the timed call is
`Workload.step` (a forward, or forward + backward in train mode). Returns Result fields, so a
sweep and the command fill the same record.
"""

from __future__ import annotations

from typing import Any

import torch

from meo_profile.measure import process as allocator
from meo_profile.measure.memory import peak_memory
from meo_profile.measure.roofline import configuration_bound
from meo_profile.measure.timing import Timing, TimingOptions, time_call
from meo_profile.measure.workload import Workload
from models import Spec
from models.spec import SpecError
from models.xmoe import routing_summary


def throughput_fields(timing: Timing, tokens: int) -> dict[str, Any]:
    return {"tokens_per_s": tokens / (timing.median_ms / 1e3)}


def measure_workload(work: Workload, options: TimingOptions, memory: bool = True,
                     bound: bool = True) -> dict[str, Any]:
    """Time `work.step`, then probe its memory and bound; all Result fields."""
    malloc = allocator_setting(work.spec.device, options)
    timing = time_call(work.step, work.spec.device, options)
    fields = {**timing.to_fields(), **throughput_fields(timing, work.tokens),
              "allocator": malloc, **routing_summary(work.model)}
    if memory:
        fields.update(peak_memory(work).to_fields())
    if bound:
        roof = configuration_bound(work.spec, work.model)
        if roof is not None:
            fields.update(roof.to_fields(timing.median_ms))
    return fields


def allocator_setting(device: str, options: TimingOptions) -> str:
    """CUDA tensors come from PyTorch's caching allocator; CPU ones from malloc as configured."""
    if device == "cuda":
        return "cuda_caching"
    return allocator.apply(options.cpu_allocator)


def measure_latency(spec: Spec, options: TimingOptions | None = None, *, memory: bool = True,
                    bound: bool = True) -> dict[str, Any]:
    """Result fields for `spec`: latency statistics and raw samples, tokens/s, peak memory,
    roofline bound and measured/bound. A CUDA out-of-memory becomes status "oom", not a crash."""
    if spec.device not in ("cpu", "cuda"):
        raise SpecError("device", spec.device, "cannot be timed: use cpu or cuda")
    try:
        work = Workload.build(spec)
        return measure_workload(work, options or TimingOptions(), memory, bound)
    except torch.OutOfMemoryError as e:
        first_line = str(e).splitlines()[0] if str(e) else "out of memory"
        return {"status": "oom", "error": first_line}
