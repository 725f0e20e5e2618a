"""Traces: a valid Chrome/Perfetto JSON whose events name the layers' phases, and a summary
sorted by self time."""

import json
import subprocess
import sys

import pytest

from meo_profile.core.errors import BadInput
from meo_profile.measure.trace import PHASES, trace
from models import Spec
from models.spec import SpecError

TINY = dict(host="layer", num_experts=4, top_k=2, d_model=64, d_ff=128, seq_len=16, batch_size=2,
            device="cpu")
TINY_FLAGS = ["--experts", "4", "--top-k", "2", "--d-model", "64", "--d-ff", "128", "--seq-len", "16",
              "--batch-size", "2", "--device", "cpu"]


def annotations(path) -> set[str]:
    """Names of the record_function ranges in a Chrome trace file."""
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    assert isinstance(events, list) and events
    return {e["name"] for e in events if e.get("cat") == "user_annotation"}


@pytest.mark.parametrize("variant, impl, phases", [
    ("moe", "grouped", {"router", "dispatch", "experts", "combine"}),
    ("moe", "loop", {"router", "experts", "combine"}),
    ("meo", "gather", {"router", "merge", "experts"}),
])
def test_trace_file_is_json_with_the_named_phases(tmp_path, variant, impl, phases):
    out = tmp_path / "trace.json"
    summary = trace(Spec(variant=variant, impl=impl, **TINY), out, warmup=1)
    assert phases <= annotations(out)
    names = [p.name for p in summary.phases]
    assert phases <= set(names)
    assert names == [p for p in PHASES if p in names]  # listed in the order the layers run them


def test_summary_sorts_operators_by_self_time(tmp_path):
    summary = trace(Spec(variant="moe", **TINY), tmp_path / "t.json", warmup=1)
    self_ms = [op.self_ms for op in summary.ops]
    assert self_ms == sorted(self_ms, reverse=True) and self_ms[0] > 0
    assert summary.self_ms_total == pytest.approx(sum(self_ms))
    assert not {op.name for op in summary.ops} & set(PHASES)  # phases have their own table
    assert summary.clock == "cpu" and summary.steps == 1


def test_train_trace_holds_the_backward(tmp_path):
    summary = trace(Spec(variant="meo", mode="train", **TINY), tmp_path / "t.json", warmup=0)
    assert any("Backward" in op.name for op in summary.ops)


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


def test_trace_command_writes_the_file_and_prints_both_tables(tmp_path):
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "cli", "trace", "--variant", "moe", *TINY_FLAGS,
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "self %" in proc.stdout and "phases" in proc.stdout and "router" in proc.stdout
    assert {"router", "dispatch", "experts", "combine"} <= annotations(out)
