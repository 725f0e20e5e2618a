"""Traces: a valid Chrome/Perfetto JSON whose events name the layers' phases, summarised from the
file itself, so a live trace and `trace --from FILE` agree."""

import json

import pytest
from meo_profile.models import Spec
from meo_profile.models.phases import PHASES
from meo_profile.models.spec import SpecError

from meo_profile.core.errors import BadInput
from meo_profile.measure.trace import kernel_time, summarize_file, trace
from meo_profile.measure.workload import Workload

TINY = dict(host="layer", num_experts=4, top_k=2, d_model=64, d_ff=128, seq_len=16, batch_size=2,
            device="cpu")
TINY_FLAGS = ["--experts", "4", "--top-k", "2", "--d-model", "64", "--d-ff", "128", "--seq-len", "16",
              "--batch-size", "2", "--device", "cpu"]


def annotations(path) -> list[str]:
    """Names of the record_function ranges in a Chrome trace file, as often as they occur."""
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    assert isinstance(events, list) and events
    return [e["name"] for e in events if e.get("cat") == "user_annotation"]


@pytest.mark.parametrize("variant, impl, phases", [
    ("moe", "grouped", {"router", "dispatch", "experts", "combine"}),
    ("moe", "loop", {"router", "experts", "combine"}),
    ("meo", "gather", {"router", "merge", "experts"}),
])
def test_trace_file_is_json_with_the_named_phases(tmp_path, variant, impl, phases):
    out = tmp_path / "trace.json"
    summary = trace(Spec(variant=variant, impl=impl, **TINY), out, warmup=1)
    assert phases <= set(annotations(out))
    names = list(summary.analysis.phase_host_ms())
    assert phases <= set(names)
    assert names == [p for p in PHASES if p in names]  # listed in the order the layers run them


def test_only_the_recorded_steps_are_in_the_file(tmp_path):
    """The profiler's own warm-up step (where its start-up cost lands) is not exported."""
    out = tmp_path / "t.json"
    summary = trace(Spec(variant="meo", **TINY), out, warmup=0, steps=2)
    steps = [n for n in annotations(out) if n.startswith("ProfilerStep#")]
    assert len(steps) == 2 == summary.analysis.steps
    assert annotations(out).count("merge") == 2 * 2  # two MoE linears per step


def test_cpu_summary_sorts_host_operators_and_has_no_device_time(tmp_path):
    summary = trace(Spec(variant="moe", **TINY), tmp_path / "t.json", warmup=1)
    a = summary.analysis
    self_ms = [op.self_ms for op in a.ops]
    assert self_ms == sorted(self_ms, reverse=True) and self_ms[0] > 0
    assert a.op_self_ms_total == pytest.approx(sum(self_ms))
    assert all(op.name.startswith("aten::") for op in a.ops)  # phases have their own table
    assert summary.clock == "cpu" and a.kernel_ms_total is None and a.kernels == []


def test_train_trace_holds_the_backward(tmp_path):
    summary = trace(Spec(variant="meo", mode="train", **TINY), tmp_path / "t.json", warmup=0)
    assert any("Backward" in op.name for op in summary.analysis.ops)


def test_kernel_pass_finds_no_device_time_on_cpu():
    assert kernel_time(Workload.build(Spec(variant="meo", **TINY)), steps=1) == (None, {})


def test_bad_paths_and_counts_are_refused(tmp_path):
    spec = Spec(variant="moe", **TINY)
    with pytest.raises(BadInput, match="^--out .*does not exist"):
        trace(spec, tmp_path / "missing" / "t.json")
    with pytest.raises(BadInput, match="^--out .*is a directory"):
        trace(spec, tmp_path)
    with pytest.raises(SpecError, match="^--steps 0"):
        trace(spec, tmp_path / "t.json", steps=0)
    (tmp_path / "t.json").write_text("kept")
    with pytest.raises(BadInput, match="^--out .*exists; pass --force"):
        trace(spec, tmp_path / "t.json")
    assert (tmp_path / "t.json").read_text() == "kept"


def test_trace_command_and_its_from_file_summary_agree(tmp_path, cli):
    out = tmp_path / "trace.json"
    # grouped, named: auto picks by timing, and loop has no dispatch phase
    live = cli("trace", "--variant", "moe", "--impl", "grouped", *TINY_FLAGS, "--out", str(out),
               "--json")
    assert live.returncode == 0, live.stderr
    again = cli("trace", "--from", str(out))  # the tables, from the file alone
    assert again.returncode == 0, again.stderr
    assert "host operators by self time" in again.stdout and "host time by phase" in again.stdout
    assert "router" in again.stdout and "device time" not in again.stdout
    live_fields, file_fields = json.loads(live.stdout), summarize_file(out).to_dict()
    assert live_fields.pop("spec")["variant"] == "moe" and file_fields.pop("spec") is None
    assert live_fields == file_fields
    assert {"router", "dispatch", "experts", "combine"} <= set(annotations(out))


def test_trace_from_a_missing_file_is_one_line_and_exit_2(tmp_path, cli):
    proc = cli("trace", "--from", str(tmp_path / "none.json"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: --from '{tmp_path / 'none.json'}': no such file"]


@pytest.mark.gpu
def test_cuda_trace_splits_device_time_by_phase(tmp_path):
    summary = trace(Spec(variant="meo", impl="dense", **{**TINY, "device": "cuda"}),
                    tmp_path / "t.json", warmup=1, steps=2)
    a = summary.analysis
    assert summary.clock == "cuda" and a.steps == 2 and a.kernel_ms_total > 0
    assert {"router", "merge", "experts"} <= set(a.kernel_ms_by_phase)
    assert sum(a.kernel_ms_by_phase.values()) == pytest.approx(a.kernel_ms_total, rel=1e-9)
    assert a.links.unlinked == 0 and a.launch.launched == a.launch.device_events
    assert summarize_file(tmp_path / "t.json").to_dict()["kernel_ms_by_phase"] == a.kernel_ms_by_phase
