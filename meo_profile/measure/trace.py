"""`meo-profile trace`: one configuration under torch.profiler, summarised and written to a file.

Convention: times in the summary are milliseconds summed over the profiled steps; "self" time
excludes the operators an operator calls. On CUDA the device's kernel time is what is summed and
sorted (the host only launches); on CPU the host's time.

The profiler records CPU activity and, when the configuration runs on CUDA, CUDA activity, with
input shapes and memory. The layers mark their phases with `record_function` (router, dispatch,
experts, merge, combine; see models/phases.py), so the Chrome/Perfetto trace file shows each
phase as a named range, and the summary totals time per phase.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.profiler import ProfilerActivity, profile

from meo_profile.core.inputs import output_file
from meo_profile.measure.preflight import check_fits
from meo_profile.measure.process import native_stderr_silenced
from meo_profile.measure.timing import MAX_WARMUP
from meo_profile.measure.workload import Workload
from models import Spec
from models.spec import SpecError

PHASES = ("router", "dispatch", "compress", "experts", "merge", "combine")


@dataclass(frozen=True)
class OpRow:
    """One operator (or phase) aggregated by name over the profiled steps."""

    name: str
    calls: int
    self_ms: float
    total_ms: float


@dataclass
class TraceSummary:
    spec: Spec
    trace_path: str
    clock: str  # "cuda" (kernel time) or "cpu" (host time)
    steps: int
    ops: list[OpRow] = field(default_factory=list)  # sorted by self time, descending
    phases: list[OpRow] = field(default_factory=list)  # in PHASES order, those that ran
    self_ms_total: float = 0.0  # all operators' self time: the denominator of shares

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d


# How to read an aggregated profiler row on each clock: (self us, total us).
CLOCK_TIMES = {
    "cpu": lambda avg: (avg.self_cpu_time_total, avg.cpu_time_total),
    "cuda": lambda avg: (avg.self_device_time_total, avg.device_time_total),
}


def to_row(avg: Any, clock: str) -> OpRow:
    self_us, total_us = CLOCK_TIMES[clock](avg)
    return OpRow(avg.key, int(avg.count), self_us / 1e3, total_us / 1e3)


def summarize(averages: list[Any], spec: Spec, trace_path: str, steps: int) -> TraceSummary:
    """Operators sorted by self time and the named phases, from `prof.key_averages()`."""
    clock = "cuda" if spec.device == "cuda" else "cpu"
    rows = [to_row(avg, clock) for avg in averages]
    by_name = {r.name: r for r in rows}
    ops = sorted((r for r in rows if r.name not in PHASES), key=lambda r: r.self_ms, reverse=True)
    return TraceSummary(spec, trace_path, clock, steps, ops=ops,
                        phases=[by_name[p] for p in PHASES if p in by_name],
                        self_ms_total=sum(r.self_ms for r in ops))


MAX_STEPS = 1000  # profiled steps: each keeps every event in memory until the trace is written


def profile_steps(work: Workload, steps: int):
    """Run `steps` steps under torch.profiler (CPU, plus CUDA when on it); the profiler object."""
    activities = [ProfilerActivity.CPU]
    if work.spec.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with native_stderr_silenced(), profile(activities=activities, record_shapes=True,
                                           profile_memory=True) as prof:
        for _ in range(steps):
            work.step()
        work.sync()  # kernels still queued belong to this trace
    return prof


def trace(spec: Spec, out: str | Path = "trace.json", *, warmup: int = 2, steps: int = 1,
          overwrite: bool = False, max_memory_bytes: int | None = None) -> TraceSummary:
    """Profile `steps` steps of `spec` after `warmup` unprofiled ones; write the Chrome trace to
    `out` (Perfetto opens it; a name ending .gz is compressed) and return the summary.

    Checked before anything is built: the device, the counts, that `out` can be written (an
    existing file only with `overwrite`), and that the configuration fits in memory."""
    if spec.device not in ("cpu", "cuda"):
        raise SpecError("device", spec.device, "cannot be traced: use cpu or cuda")
    for name, value, least, most in (("warmup", warmup, 0, MAX_WARMUP), ("steps", steps, 1, MAX_STEPS)):
        if not least <= value <= most:
            raise SpecError(name, value, f"must be an integer in {least}..{most}")
    path = output_file(out, "--out", overwrite=overwrite)
    check_fits(spec, max_memory_bytes)
    work = Workload.build(spec)
    for _ in range(warmup):  # first calls pay one-time costs (allocations, kernel selection)
        work.step()
    work.sync()
    prof = profile_steps(work, steps)
    prof.export_chrome_trace(str(path))
    if not path.is_file() or not path.stat().st_size:  # kineto reports a failed write only in a log
        raise OSError(errno.EIO, "the profiler did not write the trace file", str(path))
    return summarize(list(prof.key_averages()), spec, str(path), steps)
