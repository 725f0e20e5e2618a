"""`--impl auto` for timing: the fastest implementation that can run here, by measurement.

Counting keeps the variant's deterministic rule (`Spec.impl_by_rule`): a FLOP count must not
depend on the machine. Timing asks which implementation a user of this device would deploy:
every implementation of the variant that can run the configuration here (`candidates`) is built
and timed briefly (one warm-up call, then the fastest of `TUNE_CALLS` calls: load from other
processes only slows a call down), before and apart from the timed run, and the fastest
candidate is kept. The record says what ran (`impl`), how it was chosen
(`impl_choice`: given, rule, measured or cached) and, when timed, every candidate's median
(`impl_candidates`, ms per call; null for one that failed, e.g. out of memory).

Choices are cached per (device name, torch version, dtype, variant, shape) in a small JSON file
under the user's cache directory (`$XDG_CACHE_HOME` or `~/.cache`, then
`meo-profile/impl-choices.json`): a sweep or a second run reuses them without timing again
(`impl_choice` "cached", with the candidates' times from when they were measured). Delete the
file to measure again. The clock is injectable (`HostClock` with a fake `now` in tests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meo_profile.measure import process
from meo_profile.measure.preflight import available_bytes
from meo_profile.measure.timing import Clock, CudaEventClock, HostClock, timed_calls
from meo_profile.measure.workload import Workload
from meo_profile.models import Spec, torch_dtype
from meo_profile.models.spec import SPEC_FIELDS
from meo_profile.models.variants import CUDA_ONLY, VARIANTS
from meo_profile.results.record import device_name

TUNE_WARMUP, TUNE_CALLS = 1, 3  # brief: a choice between candidates, not a measurement
CACHE_NAME = Path("meo-profile") / "impl-choices.json"
NOT_SHAPE = ("impl", "seed", "device")  # the device is keyed by its name; the seed moves no cost


@dataclass(frozen=True)
class Choice:
    """The implementation a measurement runs, and how it was chosen."""

    impl: str
    how: str  # "given", "rule", "measured", "cached"
    candidates_ms: dict[str, float | None] = field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        return {"impl_choice": self.how, "impl_candidates": dict(self.candidates_ms) or None}


# ------------------------------------------------------------------------------- candidates
def extra_bytes(spec: Spec, impl: str) -> int:
    """Memory an implementation needs beyond the model's: transformers' batched_mm gathers
    every (token, expert) pair's matrices, N*k copies of an expert (256 GiB at OLMoE's shape)."""
    if impl != "hf-batched_mm":
        return 0
    expert = 3 * spec.d_model * spec.d_ff  # SwiGLU: gate | up (2 d d_ff) and down (d d_ff)
    return spec.batch_size * spec.seq_len * spec.top_k * expert * torch_dtype(spec).itemsize


def candidates(spec: Spec) -> list[str]:
    """The implementations that can run `spec` here and are worth timing: the host's own (a
    native host's block) or the variant's less those its experts or mode exclude; CUDA kernels
    off CUDA (the CPU only interprets them) and those that would not fit in half of the free
    memory left out."""
    variant = VARIANTS[spec.variant]
    names = spec.host_impls or [i for i in variant.impls if variant.unavailable(i, spec) is None]
    free = available_bytes(spec.device) // 2
    return [impl for impl in names
            if (impl not in CUDA_ONLY or spec.device == "cuda") and extra_bytes(spec, impl) <= free]


def default_clock(device: str) -> Clock:
    return CudaEventClock() if device == "cuda" else HostClock()


def default_step(spec: Spec) -> Callable[[], Any]:
    return Workload.build(spec).step


def brief_ms(step: Callable[[], Any], clock: Clock) -> float:
    """The fastest of TUNE_CALLS calls after TUNE_WARMUP, in ms."""
    for _ in range(TUNE_WARMUP):
        step()
    clock.sync()
    return min(timed_calls(step, clock, TUNE_CALLS))


def time_candidates(names: list[str], make_step: Callable[[str], Callable[[], Any]],
                    clock: Clock) -> dict[str, float | None]:
    """Ms per call of each candidate (`brief_ms`), built one at a time (so only one is in
    memory); None for a candidate that failed to build or run."""
    times: dict[str, float | None] = {}
    for name in names:
        try:
            times[name] = brief_ms(make_step(name), clock)
        except (RuntimeError, MemoryError, ValueError):  # OOM, a kernel refusing a shape
            times[name] = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next candidate starts from the same free memory
    return times


# ------------------------------------------------------------------------------------ cache
def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / CACHE_NAME


def cache_key(spec: Spec) -> str:
    """(device name, torch version, the CPU allocator in force, every spec field but impl,
    seed and device) as text: the allocator changes which merge is faster on a CPU."""
    shape = {f: getattr(spec, f) for f in SPEC_FIELDS if f not in NOT_SHAPE}
    malloc = process.in_force() if spec.device == "cpu" else None
    return json.dumps([device_name(spec.device), torch.__version__, malloc, shape], sort_keys=True)


def read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # absent or unreadable: measure again
        return {}


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add one entry; written to a temporary file and renamed, so a reader never sees half."""
    data = {**read_cache(path), key: entry}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -------------------------------------------------------------------------------- autotune
def autotune(spec: Spec, *, clock: Clock | None = None, path: Path | None = None,
             make_step: Callable[[Spec], Callable[[], Any]] = default_step) -> Choice:
    """The implementation timing runs for `spec` (see the module doc)."""
    if spec.impl != "auto":
        return Choice(spec.impl, "given")
    names = candidates(spec)
    if len(names) < 2:  # nothing to choose between
        return Choice(names[0] if names else spec.impl_by_rule, "rule")
    path, key = path or cache_path(), cache_key(spec)
    hit = read_cache(path).get(key)
    if isinstance(hit, dict) and hit.get("impl") in names:
        return Choice(hit["impl"], "cached", hit.get("candidates_ms") or {})
    times = time_candidates(names, lambda name: make_step(spec.replace(impl=name)),
                            clock or default_clock(spec.device))
    timed = {name: ms for name, ms in times.items() if ms is not None}
    if not timed:
        raise RuntimeError(f"no implementation of {spec.variant} ran here ({', '.join(names)})")
    best = min(timed, key=timed.get)
    write_cache(path, key, {"impl": best, "candidates_ms": times})
    return Choice(best, "measured", times)
