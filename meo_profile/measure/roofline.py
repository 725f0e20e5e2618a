"""A physical lower bound on a configuration's latency: the roofline of this very device, applied
phase by phase.

Convention: a phase's bound in milliseconds is max(compute, memory), where compute = its macs /
(the device's measured dense-matmul multiply-adds per second) and memory = the bytes it must move
/ (the device's measured copy bandwidth); what each phase must compute and move is in
phase_work.py. The phases of a forward (router, dispatch, experts, merge, combine, the host's own
work) run one after another, so the configuration's bound `roofline_ms` is the sum of its phases'
bounds (`roofline_by_phase`). MEO's merge (bound by bytes) and its matmuls (bound by compute)
then both count, where the whole-call bound max(sum of compute, sum of memory), kept as
`roofline_overlap_ms`, lets one hide behind the other; the sum is never below it.

Peaks are measured here, on the same machine and dtype, once per process (cached), never taken
from a datasheet: a measured/bound ratio near 1 means the implementation runs as fast as this
machine's best matmul and copy allow, and a ratio below 1 means the measurement is wrong (another
process slowed the peak probes, or the timing), never that a bound was beaten: the record says
`below_bound`. Training (forward + backward) costs three forwards' macs and bytes (the backward
reads the weights again, writes their gradients, and computes two matmuls per forward matmul),
the usual estimate, in every phase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from meo_profile.measure.phase_work import BOUND_PHASES, Work, phase_work
from meo_profile.measure.timing import TimingOptions, time_benchmark, time_call
from meo_profile.models import Spec, build_model
from meo_profile.models.build import TORCH_DTYPES
from meo_profile.models.spec import SpecError

# Sizes for the peak probes: large enough to reach the device's steady state (on a quiet
# two-core CPU, square matmuls from 1024 to 3072 and the paper layer's own shapes all reach the
# same ~100 GMAC/s) and, for the copy, to leave the caches; small enough that many samples fit
# in the probe's time, so that the best of them escapes other processes' load.
MATMUL_N = {"cpu": 1024, "cuda": 8192}
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
PROBE_OPTIONS = TimingOptions(warmup=1, min_run_time=0.2)
MODE_COST = {"inference": 1, "train": 3}  # forward-equivalents of work per step


# ---------------------------------------------------------------------- the device's peaks
@dataclass(frozen=True)
class DevicePeaks:
    """What this device sustains at best: dense matmul multiply-adds/s and copy bytes/s."""

    device: str
    dtype: str
    macs_per_s: float
    bytes_per_s: float


Clock = Callable[[], float] | None  # seconds; None: the device's own timer


def best_ms(fn: Callable[[], Any], device: str, clock: Clock = None) -> float:
    """The fastest sample: a peak is what the device can do, so noise only slows it down.
    `clock` (CPU only): the benchmark timer's clock in seconds, a fake one in tests."""
    if clock is not None and device == "cpu":
        return min(time_benchmark(fn, PROBE_OPTIONS, timer=clock).samples_ms)
    return min(time_call(fn, device, PROBE_OPTIONS).samples_ms)


def matmul_macs_per_s(device: str, dtype: torch.dtype) -> float:
    n = MATMUL_N[device]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    return n**3 / (best_ms(lambda: torch.mm(a, b, out=out), device) / 1e3)


def copy_bytes_per_s(device: str) -> float:
    numel = COPY_BYTES[device] // 4
    src, dst = torch.ones(numel, device=device), torch.empty(numel, device=device)
    return 2 * COPY_BYTES[device] / (best_ms(lambda: dst.copy_(src), device) / 1e3)  # read + write


def probe_peaks(device: str, dtype: str) -> DevicePeaks:
    """The peaks measured now, uncached (the load guard compares two such probes)."""
    return DevicePeaks(device, dtype, matmul_macs_per_s(device, TORCH_DTYPES[dtype]),
                       copy_bytes_per_s(device))


_BEST_PEAKS: dict[tuple[str, str], DevicePeaks] = {}


def device_peaks(device: str, dtype: str, refresh: bool = False) -> DevicePeaks:
    """Measured once per (device, dtype) per process and cached. `refresh` probes again and
    keeps the better of each figure: a peak is the best the device has shown, and load from
    other processes can only hide it (a long benchmark refreshes between rounds)."""
    key = (device, dtype)
    if key in _BEST_PEAKS and not refresh:
        return _BEST_PEAKS[key]
    return keep_best(probe_peaks(device, dtype))


def keep_best(probed: DevicePeaks) -> DevicePeaks:
    """Fold a probe into the cache, keeping the better of each figure; the best so far."""
    key = (probed.device, probed.dtype)
    best = _BEST_PEAKS.get(key, probed)
    _BEST_PEAKS[key] = DevicePeaks(probed.device, probed.dtype,
                                   max(best.macs_per_s, probed.macs_per_s),
                                   max(best.bytes_per_s, probed.bytes_per_s))
    return _BEST_PEAKS[key]


# -------------------------------------------------------------------------------- the bound
@dataclass(frozen=True)
class RooflineBound:
    """Per phase, milliseconds at the matmul peak (compute) and at the copy bandwidth (memory)."""

    compute_ms: dict[str, float]
    memory_ms: dict[str, float]
    bytes_by_phase: dict[str, float] = field(default_factory=dict)  # what each phase must move

    @property
    def by_phase_ms(self) -> dict[str, float]:
        """Each phase's bound, the slower of its compute and its memory, in BOUND_PHASES order."""
        return {p: max(self.compute_ms.get(p, 0.0), self.memory_ms.get(p, 0.0))
                for p in BOUND_PHASES if p in self.compute_ms or p in self.memory_ms}

    @property
    def bound_ms(self) -> float:
        """The phases run one after another: their bounds add up."""
        return sum(self.by_phase_ms.values())

    @property
    def overlap_ms(self) -> float:
        """The whole-call bound: every phase's compute overlapping every phase's memory."""
        return max(sum(self.compute_ms.values()), sum(self.memory_ms.values()))

    def to_fields(self, measured_ms: float | None = None) -> dict[str, Any]:
        ratio = None if measured_ms is None else measured_ms / self.bound_ms
        return {"roofline_ms": self.bound_ms, "roofline_by_phase": self.by_phase_ms,
                "roofline_bytes_by_phase": dict(self.bytes_by_phase) or None,
                "roofline_overlap_ms": self.overlap_ms, "roofline_ratio": ratio,
                "below_bound": None if ratio is None else ratio < 1}


def roofline(spec: Spec, work: dict[str, Work], peaks: DevicePeaks | None = None) -> RooflineBound:
    """The bound of `work` (phase -> macs and bytes of one forward) per step of the spec's mode."""
    peaks = peaks or device_peaks(spec.device, spec.dtype)
    forwards = MODE_COST[spec.mode]
    return RooflineBound(
        compute_ms={p: forwards * w.macs / peaks.macs_per_s * 1e3 for p, w in work.items()},
        memory_ms={p: forwards * w.bytes / peaks.bytes_per_s * 1e3 for p, w in work.items()},
        bytes_by_phase={p: forwards * w.bytes for p, w in work.items()})


def configuration_bound(spec: Spec, model: nn.Module | None = None,
                        peaks: DevicePeaks | None = None) -> RooflineBound | None:
    """The phase-wise bound of `spec` (distinct experts as `model`'s last forward touched them,
    when it ran); None where no closed form exists (XMoE's cost depends on its routing)."""
    model = model if model is not None else build_model(spec, device="meta")
    try:
        work = phase_work(spec, model)
    except SpecError:
        return None
    return roofline(spec, work, peaks)
