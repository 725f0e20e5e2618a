"""Timing modes: which mode runs and what the record says, decided on the CPU with a fake CUDA graph
and a fake clock (the step's arithmetic is real; only the time and the graph object are fakes);
the real CUDA path behind the `gpu` marker."""

import contextlib

import pytest
from meo_profile.models import Spec
from meo_profile.models.spec import SpecError

from meo_profile.measure.run import measure
from meo_profile.measure.step_timing import DeviceTools, NotCapturable, StepTiming, time_step
from meo_profile.measure.timing import HostClock, Timing, TimingOptions, time_with_clock
from meo_profile.measure.workload import Workload

TINY = dict(host="layer", num_experts=4, top_k=2, d_model=32, d_ff=64, seq_len=8, batch_size=2,
            device="cpu")
FAST = dict(warmup=1, min_run_time=0.02)
EAGER_MS, GRAPH_MS, KERNEL_MS = 1.0, 0.25, 0.2
BY_PHASE = {"router": 0.05, "merge": 0.1, "experts": 0.05}


class FakeDevice:
    """A clock in seconds that moves by scripted amounts: an eager step 'takes' EAGER_MS (its
    real arithmetic runs too), a replay of the fake graph GRAPH_MS."""

    def __init__(self, refuse: str | None = None):
        self.now_s, self.refuse = 0.0, refuse
        self.captured = self.released = self.replays = self.kernel_passes = 0

    def clock(self) -> float:
        return self.now_s

    def workload(self, spec: Spec) -> Workload:
        work = Workload.build(spec)
        real_step = work.step

        def step():
            self.now_s += EAGER_MS / 1e3
            return real_step()

        work.step = step
        return work

    @contextlib.contextmanager
    def capture(self, work: Workload, warmup: int):
        if self.refuse:
            raise NotCapturable(self.refuse)
        self.captured += 1

        def replay():
            self.replays += 1
            self.now_s += GRAPH_MS / 1e3

        try:
            yield replay
        finally:
            self.released += 1

    def tools(self) -> DeviceTools:
        def kernels(work):
            self.kernel_passes += 1
            return KERNEL_MS, dict(BY_PHASE)

        return DeviceTools(capture=self.capture, kernels=kernels,
                           time=lambda fn, options: time_with_clock(fn, HostClock(self.clock, "fake"),
                                                                    options))


def _time(timing_mode: str, device: FakeDevice, **spec) -> StepTiming:
    work = device.workload(Spec(variant="meo", **{**TINY, **spec}))
    return time_step(work, TimingOptions(**FAST, timing_mode=timing_mode), device.tools())


def test_auto_replays_the_graph_and_keeps_the_eager_and_kernel_times_beside_it():
    device = FakeDevice()
    stepped = _time("auto", device)
    fields = stepped.to_fields()
    assert stepped.mode == "graph" and stepped.note is None
    assert stepped.timing.median_ms == pytest.approx(GRAPH_MS) and device.replays > 0
    assert fields["eager_ms_median"] == pytest.approx(EAGER_MS)
    assert fields["kernel_ms"] == KERNEL_MS and fields["kernel_ms_by_phase"] == BY_PHASE
    assert fields["launch_overhead"] == pytest.approx(1 - KERNEL_MS / EAGER_MS)
    assert (device.captured, device.released, device.kernel_passes) == (1, 1, 1)


def test_auto_falls_back_to_eager_and_says_why():
    device = FakeDevice(refuse="the step synchronises with the host (nonzero)")
    stepped = _time("auto", device)
    assert stepped.mode == "eager" and stepped.timing.median_ms == pytest.approx(EAGER_MS)
    assert stepped.note == "timed eagerly: the step synchronises with the host (nonzero)"
    fields = stepped.to_fields()
    assert fields["eager_ms_median"] == stepped.timing.median_ms
    assert fields["launch_overhead"] == pytest.approx(0.8)


def test_graph_asked_of_a_step_that_cannot_be_captured_is_an_error():
    with pytest.raises(NotCapturable, match="nonzero"):
        _time("graph", FakeDevice(refuse="nonzero"))


def test_eager_never_captures():
    device = FakeDevice()
    stepped = _time("eager", device)
    assert stepped.mode == "eager" and stepped.note is None and device.captured == 0
    assert stepped.to_fields()["kernel_ms"] == KERNEL_MS


def test_train_steps_are_timed_eagerly_with_a_note():
    device = FakeDevice()
    stepped = _time("auto", device, mode="train")
    assert stepped.mode == "eager" and device.captured == 0
    assert "train steps" in stepped.note


def test_launch_overhead_is_floored_when_kernels_overlap():
    eager = Timing((1.0,), "fake")
    fields = StepTiming(eager, "eager", eager=eager, kernel_ms=1.3).to_fields()
    assert fields["launch_overhead"] == 0.0


def test_cpu_records_say_eager_and_carry_no_cuda_fields():
    record = measure(Spec(variant="meo", **TINY), ("latency",),
                     timing=TimingOptions(**FAST)).to_dict()
    assert record["timing_mode"] == "eager" and record["timer"] == "torch_benchmark"
    for field in ("timing_note", "eager_ms_median", "kernel_ms", "kernel_ms_by_phase",
                  "launch_overhead"):
        assert record[field] is None, field


def test_graph_timing_on_cpu_is_refused_before_anything_runs():
    with pytest.raises(SpecError, match="^--timing 'graph': CUDA graphs need --device cuda"):
        measure(Spec(variant="meo", **TINY), ("latency",), timing=TimingOptions(timing_mode="graph"))
    with pytest.raises(SpecError, match="^--timing 'fast': unknown; choose from auto, graph, eager"):
        TimingOptions(timing_mode="fast")


FLAGS = ["--host", "layer", "--experts", "4", "--top-k", "2", "--d-model", "32", "--d-ff", "64",
         "--seq-len", "8", "--batch-size", "2", "--device", "cpu", "--min-run-time", "0.02"]


def test_latency_refuses_graph_timing_on_cpu_in_one_line(cli):
    proc = cli("latency", *FLAGS, "--timing", "graph")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --timing 'graph': CUDA graphs need --device cuda, not cpu; use --timing auto or eager"]


# ------------------------------------------------------------------------------- CUDA
CUDA = {**TINY, "device": "cuda", "dtype": "bfloat16", "d_model": 256, "d_ff": 512}


@pytest.mark.gpu
def test_cuda_auto_replays_a_graph_with_kernel_time_beside_it():
    record = measure(Spec(variant="meo", impl="dense", **CUDA), ("latency", "memory"),
                     timing=TimingOptions(warmup=2, min_run_time=0.1)).to_dict()
    assert record["status"] == "ok", record["error"]
    assert record["timing_mode"] == "graph" and record["timing_note"] is None
    assert 0 < record["kernel_ms"] <= record["eager_ms_median"]
    assert sum(record["kernel_ms_by_phase"].values()) == pytest.approx(record["kernel_ms"])
    assert {"router", "merge", "experts"} <= set(record["kernel_ms_by_phase"])
    assert 0 <= record["launch_overhead"] < 1
    assert record["mem_method"] == "cuda_max_allocated"


@pytest.mark.gpu
def test_cuda_auto_falls_back_where_the_step_syncs_and_graph_refuses():
    spec = Spec(variant="xmoe", granularity=2, **CUDA)  # the threshold router reads its width
    auto = measure(spec, ("latency",), timing=TimingOptions(warmup=1, min_run_time=0.05))
    assert auto.status == "ok" and auto.timing_mode == "eager"
    assert auto.timing_note.startswith("timed eagerly: ")
    forced = measure(spec, ("latency",), timing=TimingOptions(min_run_time=0.05, timing_mode="graph"))
    assert forced.status == "error" and "NotCapturable" in forced.error


def test_a_sweep_asking_graph_timing_of_cpu_configurations_stops_before_it_starts(tmp_path):
    from meo_profile.sweep.plan import plan_sweep

    with pytest.raises(SpecError, match="^--timing 'graph': CUDA graphs need --device cuda"):
        plan_sweep("quick", None, {}, None, tmp_path, True, None,
                   TimingOptions(timing_mode="graph"))
