"""The load a sweep ran under, so that ratios measured under contention are not trusted silently.

The device's peaks (dense matmul multiply-adds/s, copy bytes/s; roofline.py) are probed afresh
before and after the sweep, with the 1-minute load average beside them. A peak that moved by more
than 15% between the two probes (other processes took the device, or left it), or a load average
above the machine's core count at either probe, is a warning: stored in environment.json, printed
in the sweep's summary and in the report's setup table. Timings from such a sweep are still
stored: the warning says how far to trust ratios taken from them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from meo_profile.measure.roofline import DevicePeaks, keep_best, probe_peaks

PEAK_CHANGE_LIMIT = 0.15  # relative change of a peak between the probes that is flagged
PEAK_FIGURES = (("matmul", "macs_per_s", 1e9, "GMAC/s"), ("copy", "bytes_per_s", 1e9, "GB/s"))


def usable_cores() -> int:
    """Cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoadProbe:
    peaks: tuple[DevicePeaks, ...]
    load_average: float  # 1-minute
    cores: int


Probe = Callable[[str, str], DevicePeaks]  # (device, dtype) -> peaks measured now


def probe_load(targets: Iterable[tuple[str, str]], probe: Probe | None = None,
               load_average: Callable[[], tuple[float, ...]] | None = None,
               cores: int | None = None) -> LoadProbe:
    """Fresh peaks of each (device, dtype) present on this machine (`probe_peaks` unless told),
    and the 1-minute load average."""
    probe, load_average = probe or _probe_and_keep, load_average or os.getloadavg
    present = [(d, t) for d, t in sorted(set(targets))
               if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    return LoadProbe(tuple(probe(device, dtype) for device, dtype in present),
                     load_average()[0], cores or usable_cores())


def _probe_and_keep(device: str, dtype: str) -> DevicePeaks:
    """Peaks measured now; the roofline's cache keeps them too where they are the best seen, so
    the guard's probe costs the sweep nothing extra."""
    fresh = probe_peaks(device, dtype)
    keep_best(fresh)
    return fresh


def load_warnings(before: LoadProbe, after: LoadProbe) -> list[str]:
    """What in the two probes says the machine was contended (see the module doc)."""
    out = []
    for b, a in zip(before.peaks, after.peaks):
        for name, attr, scale, unit in PEAK_FIGURES:
            old, new = getattr(b, attr), getattr(a, attr)
            change = new / old - 1
            if abs(change) > PEAK_CHANGE_LIMIT:
                out.append(f"{b.device} {b.dtype} {name} peak moved {change:+.0%} during the sweep "
                           f"({old / scale:.4g} → {new / scale:.4g} {unit}): other processes "
                           f"competed for the device; distrust close ratios")
    for when, probe in (("before", before), ("after", after)):
        if probe.load_average > probe.cores:
            out.append(f"load average {probe.load_average:.1f} {when} the sweep, above the "
                       f"{probe.cores} cores: processes queued for the CPU; distrust close ratios")
    return out


@dataclass
class LoadGuard:
    """The two probes of one sweep and what they say: `LoadGuard(targets).start()` before the
    sweep, `.finish()` after it. No targets (nothing timed): no probe, no warning."""

    targets: list[tuple[str, str]]  # (device, dtype) pairs the sweep times
    probe_options: dict[str, Any] = field(default_factory=dict)  # probe, load_average, cores
    before: LoadProbe | None = None
    after: LoadProbe | None = None
    warnings: list[str] = field(default_factory=list)

    def start(self) -> LoadGuard:
        if self.targets:
            self.before = probe_load(self.targets, **self.probe_options)
        return self

    def finish(self) -> LoadGuard:
        if self.before is not None:
            self.after = probe_load(self.targets, **self.probe_options)
            self.warnings = load_warnings(self.before, self.after)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"before": None if self.before is None else asdict(self.before),
                "after": None if self.after is None else asdict(self.after),
                "peak_change_limit": PEAK_CHANGE_LIMIT, "warnings": self.warnings}
