"""`meo-profile trace`: one configuration under torch.profiler, written to a trace file and
summarised from that file, so a live trace and `--from FILE` give the same summary.

Convention: times in the summary are milliseconds summed over the profiled steps. On CUDA the
device's time is what is split (kernels, memcpy and memset by phase; see trace_file.py); the
host's operators are a separate table, by self time. On CPU there is only the host's time.

The profiler records CPU activity and, on CUDA, CUDA activity. The layers mark their phases with
`record_function` (router, dispatch, compress, experts, merge, combine; models/phases.py), so the
trace file shows each phase as a named range. One profiled warm-up step (the schedule's) comes
before the recorded ones: the profiler's own start-up cost (CUPTI's activity buffers, ~3 ms on
an H200) lands there, not in the first operator of the trace.

`kernel_time` is the same pass, short and without shapes or memory, for the latency records: the
device time of one step, and its split by phase.
"""

from __future__ import annotations

import errno
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule

from meo_profile.core.inputs import output_file
from meo_profile.measure.autotune import autotune
from meo_profile.measure.preflight import check_fits
from meo_profile.measure.process import native_stderr_silenced
from meo_profile.measure.timing import MAX_WARMUP
from meo_profile.measure.trace_file import TraceAnalysis, analyze_trace, per_step
from meo_profile.measure.workload import Workload
from meo_profile.models import Spec
from meo_profile.models.discover import MoELayoutError, find_moe_blocks
from meo_profile.models.phases import phase
from meo_profile.models.spec import SpecError
from meo_profile.models.variants import CUDA_ONLY

KERNEL_PASS_STEPS = 3  # steps the latency records' kernel time is averaged over
MAX_STEPS = 1000  # profiled steps: each keeps every event in memory until the trace is written


@dataclass
class TraceSummary:
    """A trace file and what it holds; `spec` is None for a file summarised with `--from`."""

    spec: Spec | None
    trace_path: str
    analysis: TraceAnalysis

    @property
    def clock(self) -> str:
        """"cuda" when the trace holds device time, else "cpu" (host time only)."""
        return "cpu" if self.analysis.kernel_ms_total is None else "cuda"

    def to_dict(self) -> dict[str, Any]:
        """The analysis' fields (`kernel_ms_total`, `kernel_ms_by_phase`, tables, launch
        statistics) with the configuration and the file beside them."""
        return {"spec": None if self.spec is None else self.spec.to_dict(),
                "trace_path": self.trace_path, "clock": self.clock, **self.analysis.to_dict()}


MAX_STEPS = 1000  # profiled steps: each keeps every event in memory until the trace is written


def profile_to_file(work: Workload, path: Path, steps: int, details: bool = True) -> None:
    """One profiled warm-up step, then `steps` recorded steps, exported to `path` (Chrome JSON;
    a name ending .gz is compressed). `details`: input shapes and memory events too."""
    activities = [ProfilerActivity.CPU]
    if work.spec.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    plan = schedule(wait=0, warmup=1, active=steps, repeat=1)
    with native_stderr_silenced(), profile(
            activities=activities, schedule=plan, record_shapes=details, profile_memory=details,
            on_trace_ready=lambda prof: prof.export_chrome_trace(str(path))) as prof:
        for _ in range(1 + steps):
            work.step()
            work.sync()  # a step's kernels finish inside its own ProfilerStep range
            prof.step()


def trace(spec: Spec, out: str | Path = "trace.json", *, warmup: int = 2, steps: int = 1,
          overwrite: bool = False, max_memory_bytes: int | None = None) -> TraceSummary:
    """Profile `steps` steps of `spec` after `warmup` unprofiled ones; write the Chrome trace to
    `out` (Perfetto opens it; a name ending .gz is compressed) and return its summary.

    Checked before anything is built: the device, the counts, that `out` can be written (an
    existing file only with `overwrite`), and that the configuration fits in memory."""
    if spec.device not in ("cpu", "cuda"):
        raise SpecError("device", spec.device, "cannot be traced: use cpu or cuda")
    for name, value, least, most in (("warmup", warmup, 0, MAX_WARMUP), ("steps", steps, 1, MAX_STEPS)):
        if not least <= value <= most:
            raise SpecError(name, value, f"must be an integer in {least}..{most}")
    if spec.impl in CUDA_ONLY and spec.device != "cuda":
        raise SpecError("impl", spec.impl, "is a CUDA kernel: on CPU Triton only interprets it")
    path = output_file(out, "--out", overwrite=overwrite)
    check_fits(spec, max_memory_bytes)
    spec = spec.replace(impl=autotune(spec).impl)  # auto: what `latency` would time
    work = Workload.build(spec)
    if spec.host_impls:  # the model's own MoE block: transformers' code marks no phases
        mark_native_phases(work.model)
    for _ in range(warmup):  # first calls pay one-time costs (allocations, kernel selection)
        work.step()
    work.sync()
    profile_to_file(work, path, steps)
    if not path.is_file() or not path.stat().st_size:  # kineto reports a failed write only in a log
        raise OSError(errno.EIO, "the profiler did not write the trace file", str(path))
    return TraceSummary(spec, str(path), analyze_trace(path))


def mark_native_phases(model: nn.Module) -> int:
    """Mark the router and the experts of a native host's own MoE blocks (transformers' code,
    which marks nothing) as the `router` and `experts` ranges this project's layers mark, with
    forward hooks; return how many blocks were marked (0 where none is found)."""
    try:
        blocks = find_moe_blocks(model)
    except MoELayoutError:
        return 0
    for info in blocks:
        for name, module in (("router", info.router), ("experts", info.experts)):
            open_ranges: list = []  # a module can run again before it returns: a stack
            module.register_forward_pre_hook(
                lambda mod, args, name=name, open_ranges=open_ranges:
                    open_ranges.append(_entered(phase(name))))
            module.register_forward_hook(
                lambda mod, args, out, open_ranges=open_ranges:
                    open_ranges.pop().__exit__(None, None, None) if open_ranges else None)
    return len(blocks)


def _entered(context: Any) -> Any:
    context.__enter__()
    return context


def summarize_file(path: str | Path) -> TraceSummary:
    """The summary of a trace file written earlier (by `trace` or any torch.profiler export)."""
    return TraceSummary(None, str(path), analyze_trace(path))


def kernel_time(work: Workload, steps: int = KERNEL_PASS_STEPS) -> tuple[float | None, dict[str, float]]:
    """(device ms, device ms by phase) of one step, from a short profiled pass over `steps`
    steps; (None, {}) where the device records no kernels (CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.json"
        profile_to_file(work, path, steps, details=False)
        return per_step(analyze_trace(path))
