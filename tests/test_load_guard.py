"""The load guard: peaks probed before and after a sweep on a fake clock (a scripted probe call
time stands in for contention), warnings past 15% or above the core count, and what a sweep
stores and prints."""

import itertools
import json

import pytest
from meo_profile.models import Spec

from meo_profile.measure import load_guard
from meo_profile.measure.load_guard import LoadGuard, LoadProbe, load_warnings
from meo_profile.measure.roofline import DevicePeaks, best_ms
from meo_profile.measure.timing import TimingOptions
from meo_profile.results.store import load_warnings as stored_warnings
from meo_profile.sweep.run import SweepOptions, run_sweep

MATMUL_MACS, COPY_BYTES = 1e9, 1e8  # work of one probe call


class FakeClock:
    """Seconds that move only when a probe call 'takes' its scripted milliseconds."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def call_taking(self, ms: float):
        def fn():
            self.now_s += ms / 1e3

        return fn


def scripted_probe(call_ms):
    """A peak probe whose matmul and copy calls take the next scripted time on a fake clock,
    measured by the probes' own best-sample rule."""
    clock, script = FakeClock(), iter(call_ms)

    def probe(device: str, dtype: str) -> DevicePeaks:
        ms = best_ms(clock.call_taking(next(script)), "cpu", clock)
        return DevicePeaks(device, dtype, MATMUL_MACS / (ms / 1e3), COPY_BYTES / (ms / 1e3))

    return probe


def _guard(call_ms, load=0.5, cores=2) -> LoadGuard:
    options = dict(probe=scripted_probe(call_ms), load_average=lambda: (load, load, load),
                   cores=cores)
    return LoadGuard([("cpu", "float32")], options).start().finish()


def test_a_peak_that_moved_past_the_limit_is_flagged():
    guard = _guard([10.0, 12.5])  # every probe call 25% slower after the sweep
    assert guard.before.peaks[0].macs_per_s == pytest.approx(MATMUL_MACS / 0.010)
    assert guard.after.peaks[0].macs_per_s == pytest.approx(MATMUL_MACS / 0.0125)
    matmul, copy = guard.warnings
    assert matmul.startswith("cpu float32 matmul peak moved -20% during the sweep (100 → 80 GMAC/s)")
    assert copy.startswith("cpu float32 copy peak moved -20%")


def test_a_change_within_the_limit_and_a_quiet_machine_say_nothing():
    assert _guard([10.0, 11.0]).warnings == []  # 9% slower
    assert _guard([10.0, 8.8]).warnings == []  # 14% faster


def test_a_load_average_above_the_cores_is_flagged():
    warnings = _guard([10.0, 10.0], load=3.2, cores=2).warnings
    assert [w.split(",")[0] for w in warnings] == ["load average 3.2 before the sweep",
                                                   "load average 3.2 after the sweep"]


def test_no_timed_target_means_no_probe():
    guard = LoadGuard([]).start().finish()
    assert guard.before is None and guard.warnings == []
    quiet = LoadProbe((), 0.1, 4)
    assert load_warnings(quiet, quiet) == []


def test_a_sweep_stores_and_keeps_its_load_guard(tmp_path, monkeypatch):
    slower = itertools.chain([10.0], itertools.repeat(13.0))  # before, then after
    monkeypatch.setattr(load_guard, "_probe_and_keep", scripted_probe(slower))
    monkeypatch.setattr(load_guard.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    spec = Spec(host="layer", variant="dense", d_model=16, d_ff=32, seq_len=8, batch_size=2,
                device="cpu")
    options = SweepOptions(tmp_path, timing=TimingOptions(warmup=1, min_run_time=0.02))
    summary = run_sweep([(spec, ("latency",))], options)
    assert len(summary.load_warnings) == 2 and "-23%" in summary.load_warnings[0]
    (run,) = json.loads((tmp_path / "environment.json").read_text())["load_guard"]
    assert run["before"]["peaks"][0]["device"] == "cpu" and run["warnings"] == summary.load_warnings
    again = run_sweep([(spec, ("latency",))], options)  # resumed: nothing to time, nothing probed
    assert again.already_stored == 1 and again.load_warnings == []
    assert stored_warnings(tmp_path) == summary.load_warnings  # the first run's are kept
