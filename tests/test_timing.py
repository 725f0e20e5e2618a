"""Timing: statistics from raw samples, the measurement loops on a scripted fake clock, and the
real timers on a small sleep-free workload (ordered, positive; never a duration asserted)."""

import itertools
import json
import math

import pytest
import torch
from meo_profile.models.spec import SpecError

from meo_profile.measure.timing import (
    MIN_RUNS,
    PILOT_CALLS,
    HostClock,
    Timing,
    TimingOptions,
    time_benchmark,
    time_call,
    time_with_clock,
)


class FakeClock:
    """Seconds that move only when the workload says so: every call's duration is scripted."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def workload(self, durations_ms):
        """A callable that 'takes' the next scripted duration each call; `.calls` counts them."""
        durations = itertools.cycle(durations_ms)

        def fn():
            fn.calls += 1
            self.now_s += next(durations) / 1e3

        fn.calls = 0
        return fn


# ---------------------------------------------------------------------------- statistics
def test_statistics_of_known_samples():
    t = Timing((5.0, 1.0, 4.0, 2.0, 3.0), "test")
    assert (t.median_ms, t.p20_ms, t.p80_ms) == (3.0, pytest.approx(1.8), pytest.approx(4.2))
    assert t.iqr_ms == pytest.approx(2.0)
    assert t.runs == 5
    assert t.samples_ms == (5.0, 1.0, 4.0, 2.0, 3.0)  # raw order kept


def test_noisy_samples_warn_and_quiet_ones_do_not():
    assert Timing((10.0, 10.1, 9.9, 10.0, 10.05), "test").warnings == []
    (warning,) = Timing((5.0, 10.0, 15.0, 20.0, 25.0), "test").warnings
    assert "IQR" in warning and "median" in warning


def test_merge_concatenates_raw_samples_and_recomputes():
    merged = Timing((1.0, 2.0), "test").merge(Timing((3.0, 4.0, 5.0), "test"))
    assert merged.samples_ms == (1.0, 2.0, 3.0, 4.0, 5.0) and merged.median_ms == 3.0
    with pytest.raises(ValueError):
        Timing((1.0,), "a").merge(Timing((1.0,), "b"))


def test_record_fields_round_trip_through_raw_samples():
    t = Timing((2.0, 1.0, 3.0), "torch_benchmark")
    fields = t.to_fields()
    assert fields["latency_ms_median"] == 2.0 and fields["latency_runs"] == 3
    assert Timing.from_fields(fields) == t


# --------------------------------------------------------------- loops on the fake clock
def test_event_loop_warms_up_then_fills_min_run_time():
    clock = FakeClock()
    fn = clock.workload([2.0])
    t = time_with_clock(fn, HostClock(clock, "fake"), TimingOptions(warmup=3, min_run_time=0.1))
    assert t.runs == 50  # 100 ms / 2 ms per call
    assert fn.calls == 3 + PILOT_CALLS + 50  # warm-up and pilot calls are not samples
    assert t.samples_ms == pytest.approx((2.0,) * 50) and t.timer == "fake"


def test_event_loop_sizes_the_run_from_the_pilot_median():
    clock = FakeClock()
    t = time_with_clock(clock.workload([1.0, 2.0, 3.0]), HostClock(clock, "fake"),
                        TimingOptions(warmup=0, min_run_time=0.1))
    assert t.runs == 50  # the pilot saw 1, 2, 3 ms: median 2 ms
    assert t.samples_ms[:3] == pytest.approx((1.0, 2.0, 3.0))  # the cycle continues after it
    assert t.median_ms == pytest.approx(2.0)
    assert t.p20_ms <= t.median_ms <= t.p80_ms


def test_event_loop_takes_at_least_min_runs_of_a_slow_call():
    clock = FakeClock()
    t = time_with_clock(clock.workload([500.0]), HostClock(clock, "fake"),
                        TimingOptions(warmup=1, min_run_time=0.1))
    assert t.runs == MIN_RUNS


def test_torch_benchmark_timer_runs_on_the_fake_clock():
    clock = FakeClock()
    fn = clock.workload([5.0])
    t = time_benchmark(fn, TimingOptions(warmup=2, min_run_time=0.1), timer=clock)
    assert t.timer == "torch_benchmark" and t.calls_per_sample == 1
    assert t.samples_ms == pytest.approx((5.0,) * t.runs)
    assert t.runs == math.ceil(100 / 5)  # blocked autorange stops once 100 ms are timed


def test_torch_benchmark_tops_up_a_slow_call_to_min_runs():
    clock = FakeClock()
    t = time_benchmark(clock.workload([300.0]), TimingOptions(warmup=0, min_run_time=0.1),
                       timer=clock)
    assert t.runs == MIN_RUNS and t.samples_ms == pytest.approx((300.0,) * MIN_RUNS)


def test_adaptive_autorange_on_the_fake_clock():
    clock = FakeClock()
    t = time_benchmark(clock.workload([4.0]), TimingOptions(warmup=0, min_run_time=0.05,
                                                            autorange="adaptive"), timer=clock)
    assert t.runs >= MIN_RUNS and t.median_ms == pytest.approx(4.0)


# ------------------------------------------------------------------------ real workloads
def _matmuls(device: str):
    a = torch.randn(128, 128, device=device)
    return lambda: a @ a @ a


def test_cpu_timer_on_a_real_workload_is_ordered_and_positive():
    t = time_call(_matmuls("cpu"), "cpu", TimingOptions(warmup=1, min_run_time=0.05))
    assert t.timer == "torch_benchmark" and t.runs >= MIN_RUNS
    assert 0 < t.p20_ms <= t.median_ms <= t.p80_ms
    assert all(s > 0 for s in t.samples_ms)


@pytest.mark.gpu
def test_cuda_event_timer_on_a_real_workload_is_ordered_and_positive():
    for flush in (False, True):
        t = time_call(_matmuls("cuda"), "cuda",
                      TimingOptions(warmup=2, min_run_time=0.05, flush_l2=flush))
        assert t.timer == "cuda_events" and t.runs >= MIN_RUNS
        assert 0 < t.p20_ms <= t.median_ms <= t.p80_ms


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, flag", [({"warmup": -1}, "--warmup"),
                                          ({"min_run_time": 0}, "--min-run-time"),
                                          ({"autorange": "fastest"}, "--autorange")])
def test_bad_options_name_their_flag(kwargs, flag):
    with pytest.raises(SpecError, match=f"^{flag} "):
        TimingOptions(**kwargs)


def test_unknown_device_has_no_timer():
    with pytest.raises(SpecError, match="--device 'meta'"):
        time_call(lambda: None, "meta")


# ----------------------------------------------------------------------- the command line
TINY = ["--host", "layer", "--experts", "4", "--top-k", "2", "--d-model", "64", "--d-ff", "128",
        "--seq-len", "16", "--batch-size", "2", "--device", "cpu"]


def test_latency_json_prints_one_record_and_nothing_else(cli):
    proc = cli("latency", "--variant", "meo", *TINY, "--min-run-time", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    for key in ("latency_ms_median", "latency_ms_p20", "latency_ms_p80", "timer",
                "peak_mem_bytes", "mem_method", "roofline_ms"):
        assert record[key] is not None, key
    assert record["latency_ms_p20"] <= record["latency_ms_median"] <= record["latency_ms_p80"]
    assert len(record["latency_samples_ms"]) == record["latency_runs"]
    assert record["timer"] == "torch_benchmark" and record["timing_mode"] == "eager"
    assert record["mem_method"] == "cpu_profiler_alloc_events"
    # the phase-wise bound: its phases sum to it, and it is never below the whole-call bound
    assert record["roofline_ms"] == pytest.approx(sum(record["roofline_by_phase"].values()))
    assert {"router", "merge", "experts"} <= set(record["roofline_by_phase"])
    assert record["roofline_overlap_ms"] <= record["roofline_ms"]


def test_latency_bad_option_is_one_line_and_exit_2(cli):
    proc = cli("latency", *TINY, "--min-run-time", "-1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: --min-run-time -1.0: must be a number of seconds in (0, 3600]"
