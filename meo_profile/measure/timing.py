"""Latency of one call: raw samples kept, statistics derived on demand, two honest timers.

Convention: every time here is milliseconds per call (`*_ms`); a sample is one call, or on CPU
the mean of one block of `calls_per_sample` calls (torch.utils.benchmark times blocks so that
the timer's own cost stays negligible).

- CUDA: events recorded around each call on the stream, warm-up first, one synchronize at the
  end, many calls, optionally an L2 flush between calls (outside the events).
- CPU: `torch.utils.benchmark.Timer` with all of torch's threads (its default of one thread
  overstates latency), blocked or adaptive autorange.

Both clocks are substitutable (`Clock` for the event loop, `timer=` for the CPU timer), so tests
drive the loops with a deterministic fake clock.
"""

from __future__ import annotations

import dataclasses
import math
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils import benchmark

from meo_profile.core.stats import NOISY_IQR_OVER_MEDIAN, iqr_over_median, quantile
from meo_profile.measure.process import CPU_ALLOCATORS
from meo_profile.models.spec import SpecError

PILOT_CALLS = 3  # timed calls that size the run; their samples are discarded with the warm-up
MIN_RUNS = 5  # fewer samples make the 20th/80th percentiles meaningless
MAX_RUNS = 10_000  # caps a sub-microsecond call's loop


# ------------------------------------------------------------------------- the measurement
@dataclass(frozen=True)
class Timing:
    """Milliseconds per call from raw samples; median, percentiles and warnings derive from them."""

    samples_ms: tuple[float, ...]
    timer: str  # "cuda_events" or "torch_benchmark" (or a test clock's name)
    calls_per_sample: int = 1

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("a Timing needs at least one sample")
        object.__setattr__(self, "samples_ms", tuple(float(s) for s in self.samples_ms))

    @property
    def _sorted(self) -> tuple[float, ...]:
        return tuple(sorted(self.samples_ms))

    def quantile_ms(self, q: float) -> float:
        return quantile(self._sorted, q)

    @property
    def median_ms(self) -> float:
        return self.quantile_ms(0.5)

    @property
    def p20_ms(self) -> float:
        return self.quantile_ms(0.2)

    @property
    def p80_ms(self) -> float:
        return self.quantile_ms(0.8)

    @property
    def iqr_ms(self) -> float:
        return self.quantile_ms(0.75) - self.quantile_ms(0.25)

    @property
    def runs(self) -> int:
        return len(self.samples_ms)

    @property
    def warnings(self) -> list[str]:
        """torch.utils.benchmark's rule: an IQR above 10% of the median flags a noisy run."""
        spread = iqr_over_median(self.samples_ms)
        if spread > NOISY_IQR_OVER_MEDIAN:
            return [f"noisy timing: IQR is {spread:.0%} of the median over {self.runs} samples; "
                    "compare ratios from one run, or raise --min-run-time"]
        return []

    def merge(self, other: Timing) -> Timing:
        """Replicates of one configuration: concatenate the raw samples, statistics recompute."""
        if (other.timer, other.calls_per_sample) != (self.timer, self.calls_per_sample):
            raise ValueError("cannot merge timings from different timers or block sizes")
        return Timing(self.samples_ms + other.samples_ms, self.timer, self.calls_per_sample)

    def to_fields(self) -> dict[str, Any]:
        """The Result fields this measurement fills."""
        return {"latency_ms_median": self.median_ms, "latency_ms_p20": self.p20_ms,
                "latency_ms_p80": self.p80_ms, "latency_runs": self.runs,
                "latency_samples_ms": list(self.samples_ms), "timer": self.timer}

    @classmethod
    def from_fields(cls, record: dict[str, Any]) -> Timing:
        """Back from a stored record's raw samples (statistics are recomputed, not trusted)."""
        return cls(tuple(record["latency_samples_ms"]), record["timer"])


# ------------------------------------------------------------------------------ options
AUTORANGES = ("blocked", "adaptive")
# CUDA: replay the step from a CUDA graph (`graph`), launch it op by op (`eager`), or replay it
# where it can be captured and launch it otherwise (`auto`); see step_timing.py.
TIMING_MODES = ("auto", "graph", "eager")


# Upper limits, so that no option can make a run that never returns (an infinite or absurd
# --min-run-time; adaptive autorange may run up to 10x it).
MAX_WARMUP = 10_000
MAX_MIN_RUN_TIME_S = 3600.0


@dataclass(frozen=True)
class TimingOptions:
    """How long and how carefully to time: warm-up calls, minimum measured seconds, CPU
    autorange strategy, L2 flush between CUDA calls, the CPU allocator setting, and the CUDA
    timing mode. Stored with every timed record (`timing_options`): a resumed sweep measures
    again what was timed with other options."""

    warmup: int = 3
    min_run_time: float = 1.0  # seconds of timed calls, at least
    autorange: str = "blocked"
    flush_l2: bool = False
    cpu_allocator: str = "retain"  # see measure/process.py
    timing_mode: str = "auto"  # what was asked; the record's `timing_mode` says what ran

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) \
                or not 0 <= self.warmup <= MAX_WARMUP:
            raise SpecError("warmup", self.warmup, f"must be an integer in 0..{MAX_WARMUP}")
        if isinstance(self.min_run_time, bool) or not isinstance(self.min_run_time, (int, float)) \
                or not 0 < self.min_run_time <= MAX_MIN_RUN_TIME_S:  # NaN fails both comparisons
            raise SpecError("min_run_time", self.min_run_time,
                            f"must be a number of seconds in (0, {MAX_MIN_RUN_TIME_S:g}]")
        if self.autorange not in AUTORANGES:
            raise SpecError("autorange", self.autorange, f"unknown; choose from {', '.join(AUTORANGES)}")
        if self.cpu_allocator not in CPU_ALLOCATORS:
            raise SpecError("cpu_allocator", self.cpu_allocator,
                            f"unknown; choose from {', '.join(CPU_ALLOCATORS)}")
        if self.timing_mode not in TIMING_MODES:
            raise SpecError("timing", self.timing_mode,
                            f"unknown; choose from {', '.join(TIMING_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        """The record's `timing_options`: every option, so that any future one is kept too."""
        return dataclasses.asdict(self)


def runs_for(per_call_ms: float, min_run_time_s: float) -> int:
    """Calls that fill `min_run_time_s`, at least MIN_RUNS, at most MAX_RUNS."""
    wanted = math.ceil(min_run_time_s * 1e3 / max(per_call_ms, 1e-6))  # 1 ns floor: no div by 0
    return min(max(wanted, MIN_RUNS), MAX_RUNS)


# ------------------------------------------------------------------- the event-loop timer
class Clock(Protocol):
    """Marks taken around a call; read only after `sync`, so marking never stalls the device."""

    name: str

    def mark(self) -> Any: ...

    def sync(self) -> None: ...

    def elapsed_ms(self, start: Any, end: Any) -> float: ...


class CudaEventClock:
    """CUDA events on the current stream: they time the device's work, not the host's launches."""

    name = "cuda_events"

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        torch.cuda.synchronize()

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end)


class HostClock:
    """A host clock in seconds (`time.perf_counter` by default; a fake one in tests)."""

    def __init__(self, now: Callable[[], float] = timeit.default_timer, name: str = "host_clock"):
        self.now, self.name = now, name

    def mark(self) -> float:
        return self.now()

    def sync(self) -> None:
        pass

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3


def timed_calls(fn: Callable[[], Any], clock: Clock, n: int,
                flush: Callable[[], Any] | None = None) -> list[float]:
    """n calls, each between two marks (a flush, if any, runs before the first mark)."""
    marks = []
    for _ in range(n):
        if flush is not None:
            flush()
        start = clock.mark()
        fn()
        marks.append((start, clock.mark()))
    clock.sync()
    return [clock.elapsed_ms(start, end) for start, end in marks]


def time_with_clock(fn: Callable[[], Any], clock: Clock, options: TimingOptions,
                    flush: Callable[[], Any] | None = None) -> Timing:
    """Warm up, time a few pilot calls to size the run, then time enough calls to fill
    `min_run_time`. Pilot samples are dropped: they only choose how many calls to make."""
    for _ in range(options.warmup):
        fn()
    clock.sync()
    pilot = Timing(tuple(timed_calls(fn, clock, PILOT_CALLS, flush)), clock.name)
    n = runs_for(pilot.median_ms, options.min_run_time)
    return Timing(tuple(timed_calls(fn, clock, n, flush)), clock.name)


def l2_flusher(device: torch.device | str = "cuda") -> Callable[[], Any]:
    """Writes a buffer twice the L2 size, so each call starts with a cold cache."""
    props = torch.cuda.get_device_properties(device)
    l2_bytes = getattr(props, "L2_cache_size", 0) or 64 * 2**20  # older torch: assume 64 MiB
    buffer = torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)
    return buffer.zero_


def time_cuda(fn: Callable[[], Any], options: TimingOptions) -> Timing:
    flush = l2_flusher() if options.flush_l2 else None
    return time_with_clock(fn, CudaEventClock(), options, flush)


# ------------------------------------------------------------------------- the CPU timer
# Both strategies share torch's measurement loop; they differ in when it may stop.
AUTORANGE_RUNNERS: dict[str, Callable[[Any, float], Any]] = {
    "blocked": lambda timer, min_s: timer.blocked_autorange(min_run_time=min_s),
    # adaptive stops once IQR/median < 10% (our warning threshold), within 10x the minimum time
    "adaptive": lambda timer, min_s: timer.adaptive_autorange(
        threshold=NOISY_IQR_OVER_MEDIAN, min_run_time=min_s, max_run_time=10 * min_s),
}


def time_benchmark(fn: Callable[[], Any], options: TimingOptions,
                   timer: Callable[[], float] = timeit.default_timer) -> Timing:
    """torch.utils.benchmark.Timer over `fn()` with all of torch's threads; `timer` is the clock
    in seconds (a fake one in tests)."""
    for _ in range(options.warmup):
        fn()
    bench = benchmark.Timer(stmt="fn()", globals={"fn": fn}, timer=timer,
                            num_threads=torch.get_num_threads())
    measurement = AUTORANGE_RUNNERS[options.autorange](bench, options.min_run_time)
    block = measurement.number_per_run
    samples_ms = [t * 1e3 for t in measurement.times]
    if len(samples_ms) < MIN_RUNS:
        # a call slower than min_run_time / MIN_RUNS leaves too few samples for percentiles:
        # top up with blocks of the same size on the same clock (Timer.timeit would add its
        # own warm-up calls to each)
        blocks = timed_calls(lambda: [fn() for _ in range(block)], HostClock(timer),
                             MIN_RUNS - len(samples_ms))
        samples_ms += [t / block for t in blocks]
    return Timing(tuple(samples_ms), "torch_benchmark", block)


def time_cpu(fn: Callable[[], Any], options: TimingOptions) -> Timing:
    return time_benchmark(fn, options)


TIMERS: dict[str, Callable[[Callable[[], Any], TimingOptions], Timing]] = {
    "cuda": time_cuda,
    "cpu": time_cpu,
}


def time_call(fn: Callable[[], Any], device: str, options: TimingOptions | None = None) -> Timing:
    """Latency of `fn()` on `device` ("cpu" or "cuda") with that device's timer."""
    if device not in TIMERS:
        raise SpecError("device", device, f"has no timer; choose from {', '.join(TIMERS)}")
    return TIMERS[device](fn, options or TimingOptions())
