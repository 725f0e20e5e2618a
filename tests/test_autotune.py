"""`--impl auto` when timing: the fastest candidate under a fake clock, the cache, the record,
and the identity that lets a sweep resume whatever implementation won."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from meo_profile.models import Spec

from meo_profile.core.identity import config_key, requested_impl
from meo_profile.measure import autotune as at
from meo_profile.measure.run import measure
from meo_profile.measure.timing import HostClock, TimingOptions
from meo_profile.measure.workload import Workload
from meo_profile.sweep.run import job_key, stored_keys

TINY = dict(host="layer", d_model=32, d_ff=64, num_experts=4, top_k=2, seq_len=8, batch_size=2,
            device="cpu")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class FakeTime:
    """A clock in seconds that moves only when a step says how long it took."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t


def stepper(fake: FakeTime, cost_ms: dict[str, float], built: list[str]):
    """make_step for autotune: the real workload's step, then the fake clock moves by the
    implementation's cost."""

    def make_step(spec: Spec):
        built.append(spec.impl)
        step = Workload.build(spec).step

        def timed_step():
            out = step()
            fake.t += cost_ms[spec.impl] / 1e3
            return out

        return timed_step

    return make_step


def test_the_faster_of_two_wins_and_its_choice_is_reused_from_the_cache():
    spec = Spec(variant="meo", **TINY)
    assert at.candidates(spec) == ["gather", "dense"]  # fused: a CUDA kernel, not timed on CPU
    fake, built = FakeTime(), []
    clock = HostClock(fake.now, name="fake")
    slow_gather = stepper(fake, {"gather": 3.0, "dense": 1.0}, built)
    choice = at.autotune(spec, clock=clock, make_step=slow_gather)
    assert (choice.impl, choice.how) == ("dense", "measured")
    assert choice.candidates_ms == pytest.approx({"gather": 3.0, "dense": 1.0})
    assert built == ["gather", "dense"]

    # the same configuration again: the cache answers, nothing is built or timed
    fast_gather = stepper(fake, {"gather": 1.0, "dense": 3.0}, built)
    again = at.autotune(spec, clock=clock, make_step=fast_gather)
    assert (again.impl, again.how, again.candidates_ms) == ("dense", "cached", choice.candidates_ms)
    assert built == ["gather", "dense"]
    assert at.cache_path().is_file()

    # another shape is another entry, timed afresh; the seed is not part of the shape
    other = spec.replace(batch_size=4)
    assert at.autotune(other, clock=clock, make_step=fast_gather).impl == "gather"
    assert at.cache_key(spec.replace(seed=7)) == at.cache_key(spec) != at.cache_key(other)


def test_a_failing_candidate_is_recorded_and_left_out():
    spec = Spec(variant="meo", **TINY)
    fake, built = FakeTime(), []
    ok = stepper(fake, {"gather": 2.0}, built)

    def make_step(s: Spec):
        if s.impl == "dense":
            raise RuntimeError("out of memory")
        return ok(s)

    choice = at.autotune(spec, clock=HostClock(fake.now), make_step=make_step)
    assert choice.impl == "gather" and choice.candidates_ms["dense"] is None


def test_candidates_are_what_can_run_here():
    assert at.candidates(Spec(variant="moe", **TINY)) == ["grouped", "loop"]  # not SwiGLU: no hf
    olmoe = Spec(host="olmoe", variant="moe", layers=1, d_model=64, d_ff=32, num_experts=4,
                 top_k=2, seq_len=8, batch_size=2)
    # `moe` on olmoe is the model's own block: transformers' kernels are what can run it
    assert at.candidates(olmoe) == ["hf-grouped_mm", "hf-batched_mm", "hf-eager"]
    huge = olmoe.replace(batch_size=64, seq_len=4096, d_model=2048, d_ff=1024, num_experts=64,
                         top_k=8)  # batched_mm would gather N*k experts: terabytes
    assert "hf-batched_mm" not in at.candidates(huge)
    assert at.candidates(Spec(variant="dense", **TINY)) == ["native"]


def test_given_and_single_candidate_choices_do_not_time():
    assert at.autotune(Spec(variant="meo", impl="gather", **TINY)) == at.Choice("gather", "given")
    assert at.autotune(Spec(variant="dense", **TINY)).how == "rule"


def test_a_timed_record_runs_the_fastest_candidate_and_says_so():
    options = TimingOptions(warmup=1, min_run_time=0.01)
    record = measure(Spec(variant="meo", **TINY), ("flops", "latency"), timing=options).to_dict()
    assert record["status"] == "ok" and record["impl_choice"] == "measured"
    candidates = record["impl_candidates"]
    assert len(candidates) >= 2 and record["impl"] == min(candidates, key=candidates.get)
    counted = measure(Spec(variant="meo", **TINY), ("flops",)).to_dict()  # B k = E: gather
    assert (counted["impl"], counted["impl_choice"]) == ("gather", "rule")
    assert counted["impl_candidates"] is None
    given = measure(Spec(variant="meo", impl="gather", **TINY), ("flops",)).to_dict()
    assert given["impl_choice"] == "given"


def test_the_key_holds_the_implementation_as_asked():
    stored = {"variant": "meo", "impl": "fused", "impl_choice": "measured", "schema_version": 1}
    assert requested_impl(stored) == "auto"
    assert requested_impl({**stored, "impl_choice": "given"}) == "fused"
    assert requested_impl({"variant": "meo", "impl": "auto"}) == "auto"  # a spec's own fields
    # records from before impl_choice: the rule's choice was what auto ran
    legacy = {"variant": "meo", "impl": "gather", "num_experts": 16, "top_k": 2, "batch_size": 8,
              "schema_version": 1}
    assert requested_impl(legacy) == "auto"  # 2 * 8 <= 16: the rule picks gather
    assert requested_impl({**legacy, "impl": "dense"}) == "dense"
    assert requested_impl({**legacy, "variant": "moe-seq", "impl": "batched"}) == "auto"  # renamed


def test_a_resumed_sweep_finds_an_auto_record_whatever_won():
    spec = Spec(variant="meo", **TINY)
    record = {**spec.to_dict(), "impl": "dense", "impl_choice": "measured", "status": "ok",
              "device_name": "cpu0", "metrics": ["latency"], "schema_version": 1}
    job = job_key({**spec.to_dict(), "device_name": "cpu0"}, ("latency",))
    assert job in stored_keys([record])
    given = job_key({**spec.replace(impl="dense").to_dict(), "device_name": "cpu0"}, ("latency",))
    assert given not in stored_keys([record])  # asked by name: measured again
    assert config_key(record) == config_key(spec.to_dict())


def test_compare_matches_auto_records_whatever_won_and_names_both():
    from meo_profile.check.compare import compare_records, thresholds

    spec = Spec(variant="meo", **TINY)
    common = {**spec.to_dict(), "status": "ok", "device_name": "gpu0", "schema_version": 1,
              "impl_choice": "measured", "macs": 100, "latency_ms_median": 2.0}
    baseline = [{**common, "impl": "gather"}]
    current = [{**common, "impl": "fused", "latency_ms_median": 1.0}]
    result = compare_records(baseline, current, thresholds())
    assert result.ok and not result.missing
    latency = next(r for r in result.rows if r.field == "latency_ms_median")
    assert latency.verdict == "improved" and "impl gather -> fused" in latency.note


SPY_ON_THE_ALLOCATOR = """
import sys
from meo_profile.measure import process, run
from meo_profile.measure.timing import TimingOptions
from meo_profile.models import Spec

seen = []
real = run.autotune
def spy(spec, **kw):
    seen.append(process.in_force())
    return real(spec, **kw)
run.autotune = spy
spec = Spec(variant="meo", host="layer", d_model=32, d_ff=64, num_experts=4, top_k=2, seq_len=8,
            batch_size=4, device="cpu")
run.measure(spec, ("latency",), timing=TimingOptions(warmup=0, min_run_time=0.01))
print(seen)
"""


def test_candidates_are_timed_under_the_allocator_the_timing_uses(tmp_path):
    # a fresh process: the allocator setting is applied once per process, before the choice
    proc = subprocess.run([sys.executable, "-c", SPY_ON_THE_ALLOCATOR], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['glibc-retain']"
